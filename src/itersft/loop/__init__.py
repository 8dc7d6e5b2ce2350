"""The generate -> score -> filter -> train loop, built from small parts the caller can swap."""
