"""Corpus to chunks: read documents, tokenize them, cut them into chunks, store them in SQL."""
