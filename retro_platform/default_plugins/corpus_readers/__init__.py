"""Built-in corpus readers: where ``ingest`` gets documents."""
