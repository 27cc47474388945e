"""The retrieval store: chunk text and metadata in SQL, vectors in files beside it."""
