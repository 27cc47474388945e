"""What the stage commands share: the experiment file and its store, opened the same way."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click

from retro_platform.config import Experiment, load_experiment
from retro_platform.errors import StoreError

#: The argument every stage command takes.
experiment_argument = click.argument(
    "experiment_file", metavar="EXPERIMENT.toml", type=click.Path(dir_okay=False)
)

#: ``--set KEY=VALUE`` (repeatable), passed to the command as ``overrides``: a tuple of strings
#: for :func:`~retro_platform.config.load_experiment`.
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change a key of the experiment file, e.g. --set train.steps=100 (repeatable; "
    "VALUE is a TOML value, else a plain string).",
)

progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars (default: when stderr is a terminal; plain log lines otherwise).",
)


def exclude_document_option(example: str) -> Any:
    """``--exclude-document ID`` (repeatable), passed as ``exclude_documents``; ``example``
    ends the help with what the command does without the document."""
    return click.option(
        "--exclude-document",
        "exclude_documents",
        multiple=True,
        metavar="ID",
        help="Never retrieve from this document (its id as `search` prints it; repeatable), "
        f"e.g. {example}.",
    )


def open_experiment(
    path: str,
    overrides: Iterable[str] = (),
    *,
    read_only: bool = False,
    existing: bool = False,
    plugins: bool = True,
) -> tuple[Experiment, Any]:
    """Load the experiment file with its ``--set`` overrides and validate it in full (plugins,
    the rules between tables, every sweep point), then open its store.

    Validation comes first so that a typo costs nothing and touches nothing. ``read_only``:
    the command only reads, so it may use a store this process cannot write. ``existing`` (and
    ``read_only``): the command works on what is stored, so a store not made yet is an error.
    ``plugins=False``: the command works on the store alone (its tables and files), so the
    file's plugins are not looked up: it works after one was uninstalled.
    """
    from retro_platform.config.sweep import check_experiment

    experiment = load_experiment(path, overrides)
    if plugins:
        check_experiment(experiment)
    from retro_platform.store.database import open_store
    from retro_platform.store.migrations import sqlite_missing

    url = experiment.store.database_url
    # nothing to read: leave no empty store behind
    if (read_only or existing) and sqlite_missing(url):
        raise StoreError(
            "this experiment's corpus is not ingested yet (its store database does not "
            f"exist); run: retro-platform ingest {experiment.hint_file}"
        )
    store = open_store(
        url, experiment.store.path, read_only=read_only, hint_file=experiment.hint_file
    )
    return experiment, store


def human_bytes(count: int | None) -> str:
    if count is None:
        return "missing"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)
