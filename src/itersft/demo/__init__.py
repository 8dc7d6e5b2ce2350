"""Built-in demo tasks for `itersft demo`: tiny models trained from scratch on verifiable tasks."""
