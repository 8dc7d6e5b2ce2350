"""Data preparation for `step()`: validate inputs, tokenise, mask, truncate, collate. Pure functions."""
