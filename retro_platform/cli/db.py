"""``retro-platform db``: the schema version of the store's database, and its upgrade."""

from __future__ import annotations

import click

from retro_platform.cli.common import experiment_argument as _experiment_argument
from retro_platform.cli.common import set_option
from retro_platform.cli.group import cli
from retro_platform.config import load_experiment


@cli.group()
def db() -> None:
    """The store database's schema: which revision it is at, and upgrading it.

    A new database is created at this version's schema on first use; one made by an older
    version is refused until `db upgrade` brings it up to date.
    """


@db.command()
@_experiment_argument
@set_option
def upgrade(experiment_file: str, overrides: tuple[str, ...]) -> None:
    """Upgrade the store database of EXPERIMENT.toml to the schema this version needs.

    Creates the database if it is empty. Does nothing to a database already at the head.
    """
    from retro_platform.store.migrations import upgrade
    from retro_platform.store.urls import safe_url

    experiment = load_experiment(experiment_file, overrides)
    url = experiment.store.database_url
    before, head = upgrade(url, hint_file=experiment.hint_file)
    if before == head:
        click.echo(f"{safe_url(url)} is already at revision {head} (the head): nothing to do")
    else:
        click.echo(f"upgraded {safe_url(url)} from {before or 'an empty database'} to {head}")


@db.command()
@_experiment_argument
@set_option
def current(experiment_file: str, overrides: tuple[str, ...]) -> None:
    """Show the store database's schema revision and whether it is the head.

    The head is the revision this version of retro-platform needs. Reads EXPERIMENT.toml's
    [store] table; changes nothing, and does not create a missing SQLite file.
    """
    from retro_platform.store.migrations import head_revision, schema_status
    from retro_platform.store.urls import safe_url

    experiment = load_experiment(experiment_file, overrides)
    url = experiment.store.database_url
    revision, kind = schema_status(url)
    head = head_revision()
    upgrade_hint = f"run `retro-platform db upgrade {experiment_file}`"
    described = {
        "head": f"revision {revision} (head)",
        "empty": f"no schema yet: it is created at revision {head} on first use, or {upgrade_hint}",
        "older": f"revision {revision}, not the head {head}: {upgrade_hint}",
        "unknown": (
            f"revision {revision}, which this version of retro-platform does not know "
            f"(it needs {head}): a newer retro-platform or another program made it"
        ),
        "unversioned": (
            "no schema revision, but retro-platform's tables: not made by retro-platform's "
            f"migrations, so this version (which needs {head}) cannot use it"
        ),
    }[kind]
    click.echo(f"{safe_url(url)}: {described}")
