"""What the stage commands share: the experiment file and its store, opened the same way."""

from __future__ import annotations

from typing import Any

import click

from retro_platform.config import Experiment, load_experiment

#: The argument every stage command takes.
experiment_argument = click.argument(
    "experiment_file", metavar="EXPERIMENT.toml", type=click.Path(dir_okay=False)
)


def open_experiment(path: str) -> tuple[Experiment, Any]:
    """Load and fully validate the experiment file (plugins included), then open its store.

    Validation comes first so that a typo costs nothing and touches nothing.
    """
    experiment = load_experiment(path)
    experiment.check_plugins()
    from retro_platform.store.database import open_store

    store = open_store(experiment.store.database_url, experiment.store.path)
    return experiment, store


def human_bytes(count: int | None) -> str:
    if count is None:
        return "missing"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)
