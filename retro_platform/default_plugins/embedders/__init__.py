"""Built-in embedders: chunk text to frozen vectors."""
