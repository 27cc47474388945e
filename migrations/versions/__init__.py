"""Revisions of the store's schema, oldest first by file name (Alembic ignores this file)."""
