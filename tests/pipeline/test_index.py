"""``retro-platform index`` and ``search``: embeddings, a Faiss index and neighbours, reused,
rebuilt, and checked against SQL."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from retro_platform.cli import cli
from retro_platform.cli.common import open_experiment
from retro_platform.corpus.chunk_table import load_chunk_table, validation_documents
from retro_platform.corpus.ingest import ingest
from retro_platform.errors import IndexFileError
from retro_platform.generation import search
from retro_platform.index.build import open_index
from retro_platform.pipeline import run_index
from retro_platform.pipeline.check import check_store
from retro_platform.plugins import get_registry
from retro_platform.store.locks import working_on_index
from retro_platform.store.models import BUILDING, Document, EmbeddingSet, NeighbourSet, VectorIndex
from tests.pipeline.helpers import write_experiment


def indexed(path: Path):
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    return experiment, store, run_index(experiment, store, progress=False, log=lambda _: None)


def test_neighbours_come_from_other_documents_nearest_first(experiment_file) -> None:
    experiment, store, result = indexed(experiment_file())
    neighbours = np.asarray(result.neighbours.open())
    with store.session() as session:
        table = load_chunk_table(session, result.corpus_id)
    assert neighbours.shape == (len(table), 2)
    assert (neighbours != -1).all()  # six documents: always enough candidates
    rows = table.rows_of(neighbours)
    assert not (table.document_ids[rows] == table.document_ids[:, None]).any()

    # the same answer as brute force over the other documents' embeddings
    vectors = np.asarray(result.embeddings.open())
    query = 10
    scores = vectors @ vectors[query]
    scores[table.document_ids == table.document_ids[query]] = -np.inf
    best = np.sort(scores)[::-1][:2]
    assert np.allclose(scores[rows[query]], best, atol=1e-5)


def test_index_twice_does_no_work_and_a_new_retriever_builds_beside(experiment_file) -> None:
    path = experiment_file()
    experiment, store, first = indexed(path)
    stamp = first.index.path.stat().st_mtime_ns
    again = run_index(experiment, store, progress=False, log=lambda _: None)
    assert again == first and first.index.path.stat().st_mtime_ns == stamp

    hnsw = experiment_file(retriever={"name": "faiss-hnsw"})
    experiment, store = open_experiment(hnsw)
    other = run_index(experiment, store, progress=False, log=lambda _: None)
    assert other.embeddings == first.embeddings  # the embeddings are shared
    assert other.index.id != first.index.id and first.index.path.exists()
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(VectorIndex)) == 2
        assert session.scalar(select(func.count()).select_from(EmbeddingSet)) == 1


def test_a_search_time_option_reuses_the_index_and_recomputes_neighbours(experiment_file) -> None:
    narrow = experiment_file(retriever={"name": "faiss-hnsw", "efSearch": 4})
    experiment, store, first = indexed(narrow)
    stamp = first.index.path.stat().st_mtime_ns

    wide = experiment_file(retriever={"name": "faiss-hnsw", "efSearch": 200})
    experiment, store = open_experiment(wide)
    second = run_index(experiment, store, progress=False, log=lambda _: None)
    assert second.embeddings == first.embeddings
    assert second.index.id == first.index.id  # efSearch is not part of what the index is
    assert first.index.path.stat().st_mtime_ns == stamp
    assert second.neighbours.id != first.neighbours.id  # but the neighbours depend on it
    retriever = open_index(second.index, options=experiment.plugin_table("retriever").options)
    assert retriever.options.efSearch == 200

    bigger = experiment_file(retriever={"name": "faiss-hnsw", "efSearch": 200, "M": 8})
    experiment, store = open_experiment(bigger)
    third = run_index(experiment, store, progress=False, log=lambda _: None)
    assert third.index.id != first.index.id  # M is: a new index beside the old


BATCHED_RETRIEVER = """
    from typing import ClassVar

    from pydantic import Field

    from retro_platform import hookimpl
    from retro_platform.default_plugins.retrievers.faiss_flat import (
        FaissFlatRetriever,
        FlatOptions,
    )


    class BatchedOptions(FlatOptions):
        runtime_options: ClassVar[frozenset[str]] = frozenset({"query_batch"})
        query_batch: int = Field(64, ge=1)


    class BatchedRetriever(FaissFlatRetriever):
        Options = BatchedOptions

        def search(self, queries, k):
            size = self.options.query_batch
            parts = [super(BatchedRetriever, self).search(queries[i : i + size], k)
                     for i in range(0, max(len(queries), 1), size)]
            import numpy as np
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


    @hookimpl
    def register_retrievers(register):
        register("batched-flat", BatchedRetriever)
"""


def test_a_runtime_option_reuses_the_index_and_the_neighbours(
    experiment_file, plugin_dist, third_party_plugins
) -> None:
    plugin_dist("batched-retriever", BATCHED_RETRIEVER)
    experiment, store, first = indexed(
        experiment_file(retriever={"name": "batched-flat", "query_batch": 3})
    )
    stamps = [path.stat().st_mtime_ns for path in (first.index.path, first.neighbours.path)]

    experiment, store = open_experiment(
        experiment_file(retriever={"name": "batched-flat", "query_batch": 500})
    )
    second = run_index(experiment, store, progress=False, log=lambda _: None)
    assert second == first  # the same stored index and neighbour set
    assert [path.stat().st_mtime_ns for path in (first.index.path, first.neighbours.path)] == stamps
    assert experiment.plugin_table("retriever").options["query_batch"] == 500

    # every stored result names the plugin, distribution and version that made it
    with store.session() as session:
        index = session.get(VectorIndex, first.index.id)
        neighbours = session.get(NeighbourSet, first.neighbours.id)
        embeddings = session.get(EmbeddingSet, first.embeddings.id)
        made_by = (index.plugin, neighbours.plugin, embeddings.plugin)
    retriever = {"name": "batched-flat", "distribution": "batched-retriever", "version": "1.0"}
    embedder = {
        "name": "hashing",
        "distribution": "retro-platform",
        "version": version("retro-platform"),
    }
    assert made_by == (retriever, retriever, embedder)


def test_runtime_options_are_options_of_their_plugin() -> None:
    for family in ("corpus_readers", "tokenizers", "embedders", "retrievers"):
        for registration in get_registry(family).values():
            options = registration.factory.Options
            unknown = (options.runtime_options | options.search_options) - set(options.model_fields)
            assert not unknown, f"{registration.name}: {sorted(unknown)}"
            assert not options.search_options or family == "retrievers", registration.name


def test_missing_neighbours_are_marked_not_invented(tmp_path: Path, database_url: str) -> None:
    corpus = tmp_path / "two"
    corpus.mkdir()
    (corpus / "a.txt").write_text("alpha " * 5)  # one chunk each
    (corpus / "b.txt").write_text("beta " * 5)
    path = write_experiment(tmp_path, corpus, database_url)
    _, _, result = indexed(path)
    neighbours = np.asarray(result.neighbours.open())
    # each chunk has exactly one candidate from another document: k=2 leaves one slot empty
    assert neighbours.shape == (2, 2)
    assert (neighbours[:, 1] == -1).all() and (neighbours[:, 0] != -1).all()


def test_validation_documents_are_not_in_the_index(experiment_file) -> None:
    retrieval = {"chunk_size": 32, "neighbours": 2, "validation_fraction": 0.5}
    experiment, store, result = indexed(experiment_file(retrieval=retrieval))
    with store.session() as session:
        table = load_chunk_table(session, result.corpus_id)
        held_out = validation_documents(session, result.corpus_id, 0.5)
    assert 0 < len(held_out) < 6
    neighbours = np.asarray(result.neighbours.open())
    found = neighbours[neighbours != -1]
    assert not np.isin(table.document_ids[table.rows_of(found)], held_out).any()
    assert result.index.count == int((~np.isin(table.document_ids, held_out)).sum())


def test_search_shows_chunks_with_their_documents(experiment_file, corpus_dir: Path) -> None:
    path = experiment_file()
    experiment, store, _ = indexed(path)
    text = (corpus_dir / "colorsys.py").read_text()
    query = text[text.index("def rgb_to_hls") :][:60]
    hits = search(experiment, store, query, 3)
    assert len(hits) == 3 and hits[0].document == "colorsys.py"
    assert hits[0].score >= hits[1].score >= hits[2].score
    result = CliRunner().invoke(cli, ["search", str(path), query, "-k", "2"])
    assert result.exit_code == 0, result.output
    assert "colorsys.py" in result.output and "score" in result.output


def test_an_empty_query_is_one_line_and_exit_2(experiment_file) -> None:
    path = experiment_file()
    indexed(path)
    for query in ("", "  \n"):
        result = CliRunner().invoke(cli, ["search", str(path), query])
        assert result.exit_code == 2, result.output
        assert result.output == "Error: the query is empty; give some text to search for\n"


def test_search_before_index_says_what_to_run(experiment_file) -> None:
    path = experiment_file()
    experiment, store = open_experiment(path)
    result = CliRunner().invoke(cli, ["search", str(path), "query"])
    assert result.exit_code == 2 and "retro-platform ingest" in result.output
    ingest(experiment, store, progress=False)
    result = CliRunner().invoke(cli, ["search", str(path), "query"])
    assert result.exit_code == 2 and "retro-platform index" in result.output


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_damaged_index_file_names_the_rebuild_command(experiment_file, damage: str) -> None:
    path = experiment_file()
    experiment, store, result = indexed(path)
    if damage == "missing":
        result.index.path.unlink()
    else:
        result.index.path.write_bytes(b"not a faiss index" * 10)
    with pytest.raises(IndexFileError, match="--rebuild"):
        search(experiment, store, "query", 2)
    cli_result = CliRunner().invoke(cli, ["search", str(path), "query"])
    assert cli_result.exit_code == 2 and "--rebuild" in cli_result.output
    assert cli_result.output.count("\n") == 1
    assert CliRunner().invoke(cli, ["store", "check", str(path)]).exit_code == 1

    rebuilt = CliRunner().invoke(cli, ["index", str(path), "--rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert search(experiment, store, "query", 2)
    assert CliRunner().invoke(cli, ["store", "check", str(path)]).exit_code == 0


def test_store_check_finds_an_index_that_disagrees_with_sql(experiment_file) -> None:
    path = experiment_file()
    experiment, store, result = indexed(path)
    assert check_store(store).ok
    # an index of the same kind and size whose ids are not the chunks'
    retriever = experiment.plugin_table("retriever").build(result.index.dimension)
    vectors = np.asarray(result.embeddings.open())[: result.index.count]
    retriever.build(np.ascontiguousarray(vectors), np.arange(result.index.count) + 10**9)
    retriever.save(result.index.path)
    report = check_store(store)
    assert not report.ok
    assert any("no chunk in SQL" in problem for problem in report.problems)


def test_interrupted_embedding_and_neighbours_resume(experiment_file) -> None:
    experiment, store, full = indexed(experiment_file())
    expected_vectors = np.array(full.embeddings.open())
    expected_neighbours = np.array(full.neighbours.open())
    # the state a kill leaves: rows written up to a point, the rest not yet
    with store.session() as session:
        embedding_set = session.get(EmbeddingSet, full.embeddings.id)
        embedding_set.status, embedding_set.done = BUILDING, embedding_set.count // 2
        neighbours = session.get(NeighbourSet, full.neighbours.id)
        neighbours.status, neighbours.done = BUILDING, 1
    vectors = np.load(full.embeddings.path, mmap_mode="r+")
    vectors[full.embeddings.count // 2 :] = 0
    vectors.flush()
    resumed = run_index(experiment, store, progress=False, log=lambda _: None)
    assert np.array_equal(np.asarray(resumed.embeddings.open()), expected_vectors)
    assert np.array_equal(np.asarray(resumed.neighbours.open()), expected_neighbours)


def test_store_stats_counts_what_is_stored(experiment_file) -> None:
    path = experiment_file()
    experiment, store, result = indexed(path)
    output = CliRunner().invoke(cli, ["store", "stats", str(path), "--json"])
    assert output.exit_code == 0, output.output
    figures = json.loads(output.output)
    with store.session() as session:
        documents = session.scalar(select(func.count()).select_from(Document))
    assert figures["corpora"][0]["documents"] == documents
    assert figures["corpora"][0]["chunks"] == result.embeddings.count
    assert figures["vector_indexes"][0]["vectors"] == result.index.count
    ours = f"retro-platform {version('retro-platform')}"
    assert [figures[key][0]["made_by"] for key in figures if key.endswith("_sets")] == [ours] * 2
    assert figures["vector_indexes"][0]["made_by"] == ours
    assert "password" not in output.output


@pytest.mark.parametrize("flag", ["--rebuild", "--reembed", "--recompute-neighbours"])
def test_a_rebuild_is_refused_while_another_process_is_at_work(experiment_file, flag) -> None:
    """A rebuild starts sets over: beside a process that holds the corpus's index-work lock
    (one that may be building them) it is one line, exit 2, and nothing stored changes."""
    path = experiment_file()
    experiment, store, result = indexed(path)
    before = np.array(result.neighbours.open())
    with working_on_index(store, result.corpus_id):  # another `index`, at work
        refused = CliRunner().invoke(cli, ["index", str(path), "--no-progress", flag])
    assert refused.exit_code == 2, refused.output
    assert refused.output == (
        "Error: another process is indexing this corpus, and --rebuild, --reembed and "
        "--recompute-neighbours start over what it may be building; run retro-platform index "
        f"{path} with them once it has finished\n"
    )
    with store.session() as session:
        assert {row.status for row in session.scalars(select(NeighbourSet))} == {"ready"}
    assert np.array_equal(np.array(result.neighbours.open()), before)
    done = CliRunner().invoke(cli, ["index", str(path), "--no-progress", flag])
    assert done.exit_code == 0, done.output  # once nobody is at work


def test_index_before_ingest_says_so_and_creates_no_store(tmp_path: Path, corpus_dir) -> None:
    path = write_experiment(tmp_path, corpus_dir)
    result = CliRunner().invoke(cli, ["index", str(path), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.output == (
        "Error: this experiment's corpus is not ingested yet (its store database does not "
        f"exist); run: retro-platform ingest {path}\n"
    )
    assert not (tmp_path / "store").exists()
