"""Built-in retrievers: Faiss indexes over chunk embeddings."""
