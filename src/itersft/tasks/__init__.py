"""Task sources: where the loop's prompts (and the metadata its scorers need) come from."""
