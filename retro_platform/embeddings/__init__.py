"""Chunks to embeddings: every chunk's text through the experiment's embedder, into a file."""
