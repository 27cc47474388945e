"""Embeddings to a vector index: the retriever plugin's index over the retrieval database."""
