"""Alembic environment of the retro-platform store.

Two ways in, one environment:

- retro-platform itself (:mod:`retro_platform.store.migrations`) builds the Alembic ``Config`` in
  code, with ``script_location`` taken from the installed package ``retro_platform.migrations``
  (this folder, shipped inside the wheel) and ``sqlalchemy.url`` from the experiment's
  ``[store]``;
- developers run ``alembic -c alembic.ini ...`` in the repository; the URL is the one in
  ``alembic.ini`` unless ``-x url=...`` gives another, e.g.
  ``alembic -c alembic.ini -x url=sqlite:///store/retro.db upgrade head``.

All pending revisions run in one transaction, which holds a lock from its start: PostgreSQL's
advisory lock, SQLite's ``BEGIN IMMEDIATE`` (see ``make_engine(..., migrations=True)``). Two
processes opening a new store at once thus create it once: the second waits, then finds the
head and has nothing to do. On SQLite the foreign keys are off while migrating (batch mode
rebuilds a table by dropping it, which would cascade deletes into its children) and are checked
once the migrations are done.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from retro_platform.store.engine import make_engine
from retro_platform.store.models import Base
from retro_platform.store.urls import safe_url

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

#: The PostgreSQL advisory lock that serializes migrations (any constant of our own).
MIGRATION_LOCK = 0x2E7A0_5702E


def database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: set sqlalchemy.url or pass -x url=...")
    return url


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = database_url()
    engine = make_engine(url, migrations=True)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                transactional_ddl=True,
            )
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(
                        f"the migrations left {len(broken)} rows of {safe_url(url)} with "
                        f"broken foreign keys, e.g. {tuple(broken[0])}"
                    )
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
