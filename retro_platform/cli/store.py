"""``retro-platform store``: look inside the retrieval store."""

from __future__ import annotations

import json

import click

from retro_platform.cli.common import (
    experiment_argument,
    human_bytes,
    open_experiment,
    set_option,
)
from retro_platform.cli.group import cli
from retro_platform.text_table import text_table


@cli.group()
def store() -> None:
    """Inspect the retrieval store of an experiment."""


@store.command()
@experiment_argument
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def stats(experiment_file: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Counts and sizes: corpora, documents, chunks, embeddings, indexes, neighbours."""
    from retro_platform.store.stats import store_stats

    _, opened = open_experiment(experiment_file, overrides, read_only=True)
    figures = store_stats(opened)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    click.echo(f"store {figures['url']}  files {figures['data_dir']}")
    for title, key in (
        ("CORPORA", "corpora"),
        ("EMBEDDINGS", "embedding_sets"),
        ("INDEXES", "vector_indexes"),
        ("NEIGHBOURS", "neighbour_sets"),
    ):
        rows = figures[key]
        click.echo(f"\n{title}")
        if not rows:
            click.echo("  none")
            continue
        header = tuple(name.upper() for name in rows[0])
        body = [
            tuple(human_bytes(v) if name == "bytes" else str(v) for name, v in row.items())
            for row in rows
        ]
        click.echo(text_table(header, body))


@store.command()
@experiment_argument
@set_option
def check(experiment_file: str, overrides: tuple[str, ...]) -> None:
    """Check that SQL and the index files agree; exit code 1 if they do not.

    Every id in every vector index must be a chunk in SQL and every chunk of the retrieval
    database must be in its index; embedding and neighbour files must match their records.
    """
    from retro_platform.pipeline.check import check_store

    _, opened = open_experiment(experiment_file, overrides, read_only=True)
    report = check_store(opened)
    for line in report.checked:
        click.echo(f"checked {line}")
    for line in report.problems:
        click.echo(f"PROBLEM {line}", err=True)
    if not report.ok:
        raise SystemExit(1)
    click.echo("store is consistent")
