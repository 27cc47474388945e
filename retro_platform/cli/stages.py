"""The retrieval stages on their own: ``ingest``, ``index`` and ``search``."""

from __future__ import annotations

import json

import click

from retro_platform.cli.common import (
    exclude_document_option,
    experiment_argument,
    open_experiment,
    progress_option,
    set_option,
)
from retro_platform.cli.group import cli
from retro_platform.errors import ConfigError


@cli.command()
@experiment_argument
@set_option
@progress_option
@click.option(
    "--prune",
    is_flag=True,
    help="Also remove stored documents that the corpus no longer yields (deleted files).",
)
@click.option(
    "--remove",
    "remove_ids",
    multiple=True,
    metavar="DOC_ID",
    help="Remove this document (its id as `search` shows it) instead of reading the corpus "
    "(repeatable).",
)
def ingest(
    experiment_file: str,
    overrides: tuple[str, ...],
    progress: bool | None,
    prune: bool,
    remove_ids: tuple[str, ...],
) -> None:
    """Read the corpus, tokenize it and store its chunks in SQL.

    Idempotent and resumable: documents already stored with the same content are skipped, so
    running it again after an interruption (or after adding files) does only what is left;
    changed documents are replaced. Files that are not UTF-8, are empty or are larger than
    [store] max_document_bytes are skipped and counted. After adding, changing or removing
    documents, `index` updates the index without rebuilding it.

    --remove deletes documents without reading the corpus (a later ingest adds them back if the
    corpus still yields them); --prune removes the ones the corpus no longer yields.
    """
    if remove_ids and prune:
        raise click.UsageError("--remove and --prune do not go together; run them one at a time")
    experiment, store = open_experiment(experiment_file, overrides)
    if remove_ids:
        from retro_platform.corpus.remove import remove_documents

        click.echo(remove_documents(experiment, store, remove_ids).summary())
        return
    from retro_platform.pipeline import ingest as run_ingest

    report = run_ingest(experiment, store, prune=prune, progress=progress)
    click.echo(report.summary())


@cli.command()
@experiment_argument
@set_option
@progress_option
@click.option(
    "--rebuild", is_flag=True, help="Rebuild the vector index and the neighbours even if stored."
)
@click.option(
    "--reembed",
    is_flag=True,
    help="Also embed every chunk again (after the embedding model's files changed).",
)
@click.option(
    "--recompute-neighbours",
    is_flag=True,
    help="Search every chunk's neighbours again (after documents were added, existing chunks "
    "otherwise keep theirs).",
)
@click.option(
    "--shard",
    "shard_text",
    metavar="I/N",
    help="Build only slice I of N (0 <= I < N) of the embeddings and, once the index is "
    "built, of the neighbours; run I = 0..N-1 on machines that share the store.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="With --shard: wait (polling the store) for the index and the other shards' "
    "neighbours instead of exiting, so that one command per machine builds everything; if "
    "the shard that should merge a set or build the index was stopped, a waiting shard does it; "
    "one stopped before finishing its slice is named, to be started again.",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=None,
    help="With --wait: give up after this long (exit 2; what is built stays). Default: no limit.",
)
def index(
    experiment_file: str,
    overrides: tuple[str, ...],
    progress: bool | None,
    rebuild: bool,
    reembed: bool,
    recompute_neighbours: bool,
    shard_text: str | None,
    wait: bool,
    wait_timeout: float | None,
) -> None:
    """Embed every chunk, build the vector index and every chunk's neighbours.

    Reuses what is stored: a second run with the same options does no work, and a different
    [embedder] or [retriever] builds a new index beside the old one. Interrupted embedding and
    neighbour searches resume where they stopped. After `ingest` added, changed or removed
    documents, only new chunks are embedded and the index is updated in place of a rebuild
    (vectors added and removed; an index type that cannot remove is rebuilt, and says so).

    --shard I/N splits the work between N processes that share the store (a PostgreSQL URL
    and one store folder): each embeds its slice of the chunks; the one that finishes last
    merges them and builds the index; run each shard again to search its slice of the
    neighbours (or give every shard --wait: it waits for the index and the others, then
    ends with the finished result). The merged results are those of one process. A run without
    --shard finishes whatever slices are left and merges them.
    """
    from retro_platform.pipeline import IndexResult, Shard, refuse_rebuild_in_shards, run_index
    from retro_platform.pipeline.shard_wait import run_index_waiting

    shard = None if shard_text is None else Shard.parse(shard_text)
    if shard is not None and (rebuild or reembed or recompute_neighbours):
        refuse_rebuild_in_shards(experiment_file)
    if (wait or wait_timeout is not None) and shard is None:
        raise ConfigError(
            "--wait and --wait-timeout go with --shard I/N (a run without --shard does "
            "everything itself and waits for nothing)"
        )
    if wait_timeout is not None and not wait:
        raise ConfigError("--wait-timeout goes with --wait: add --wait")
    experiment, store = open_experiment(experiment_file, overrides, existing=True)
    if wait:
        assert shard is not None
        result = run_index_waiting(
            experiment, store, shard, timeout_s=wait_timeout, progress=progress, log=click.echo
        )
    else:
        result = run_index(
            experiment,
            store,
            rebuild=rebuild,
            reembed=reembed,
            recompute_neighbours=recompute_neighbours,
            shard=shard,
            progress=progress,
            log=click.echo,
        )
    if not isinstance(result, IndexResult):
        click.echo(result.summary(experiment.hint_file))
        return
    neighbours = result.neighbours
    click.echo(
        f"embeddings {result.embeddings.id}: {result.embeddings.count} chunks, "
        f"{result.embeddings.dimension}-d\n"
        f"index {result.index.id} ({result.index.retriever}): {result.index.count} vectors, "
        f"{result.index.path}\n"
        f"neighbours {neighbours.id}: k={neighbours.k}, exclusion {neighbours.exclusion}, "
        f"{neighbours.path}"
    )


@cli.command()
@experiment_argument
@click.argument("query")
@set_option
@click.option("-k", "k", default=5, show_default=True, help="How many chunks to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
@exclude_document_option("to see what else is near QUERY when its own source is left out")
def search(
    experiment_file: str,
    query: str,
    overrides: tuple[str, ...],
    k: int,
    as_json: bool,
    exclude_documents: tuple[str, ...],
) -> None:
    """Show the chunks nearest to QUERY: score, document, position and text."""
    from retro_platform.generation import search as run_search

    if not query.strip():  # it embeds to next to nothing: every hit would be arbitrary
        raise ConfigError("the query is empty; give some text to search for")
    experiment, store = open_experiment(experiment_file, overrides, read_only=True)
    hits = run_search(experiment, store, query, k, exclude_documents=exclude_documents)
    if as_json:
        click.echo(json.dumps([hit.__dict__ for hit in hits], indent=2))
        return
    for rank, hit in enumerate(hits, 1):
        click.echo(
            f"{rank}. score {hit.score:.4f}  {hit.document}  chunk {hit.position}  (id {hit.chunk_id})"
        )
        click.echo("    " + hit.text.strip().replace("\n", "\n    "))
