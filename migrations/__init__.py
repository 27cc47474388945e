"""The store's Alembic environment, installed as ``retro_platform.migrations`` (see
pyproject.toml); :func:`retro_platform.store.migrations.migrations_dir` finds it."""
