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
    """Inspect the retrieval store of an experiment, and prune its earlier versions."""


@store.command()
@experiment_argument
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def stats(experiment_file: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Counts and sizes: corpora, documents, chunks, embeddings, indexes, neighbours.

    Reads the store alone: it works when a plugin the experiment names is not installed.
    """
    from retro_platform.store.stats import store_stats

    _, opened = open_experiment(experiment_file, overrides, read_only=True, plugins=False)
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


@store.command()
@experiment_argument
@set_option
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def prune(experiment_file: str, overrides: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Remove the embeddings, indexes and neighbours of earlier corpus versions.

    After ingest changes a corpus, index builds the new version from the earlier one and keeps
    both. This removes the earlier versions' records and files, except the newest finished one
    of each kind that the current version has not been indexed for yet (the next index derives
    from it). The current version is never touched; a corpus that a process is indexing is
    skipped. The whole store is pruned, for every corpus in it. Needs none of the
    experiment's plugins.
    """
    from retro_platform.pipeline.prune import prune as prune_store

    _, opened = open_experiment(
        experiment_file, overrides, read_only=dry_run, existing=True, plugins=False
    )
    plan = prune_store(opened, dry_run=dry_run)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "removed": [
                        {
                            "record": record.what,
                            "corpus": record.corpus_id,
                            "corpus_version": record.corpus_version,
                            "bytes": record.bytes,
                            "files": [str(path) for path in record.files],
                        }
                        for record in plan.removed
                    ],
                    "kept": plan.kept,
                    "busy_corpora": plan.busy,
                    "corpora_in_use": plan.in_use,
                    "bytes": plan.bytes,
                },
                indent=2,
            )
        )
        return
    if plan.removed:
        body = [
            (r.what, str(r.corpus_id), str(r.corpus_version), human_bytes(r.bytes))
            for r in plan.removed
        ]
        click.echo(text_table(("RECORD", "CORPUS", "VERSION", "BYTES"), body))
    for line in plan.kept:
        click.echo(f"kept {line}")
    for corpus_id in plan.busy:
        click.echo(f"skipped corpus {corpus_id}: a process is indexing it; prune again later")
    for corpus_id in plan.in_use:
        click.echo(
            f"skipped corpus {corpus_id}: a run that is training reads its index; prune again "
            "once it has finished"
        )
    verb = "would free" if dry_run else "freed"
    count = len(plan.removed)
    click.echo(
        f"{count} record{'s' if count != 1 else ''} of earlier corpus versions "
        f"{'would be ' if dry_run else ''}removed; {verb} {human_bytes(plan.bytes)}"
    )
