"""Knowledge added and removed without retraining: ``ingest`` (``--prune``, ``--remove``) then
``index`` embeds only new chunks and updates the index in place of a rebuild."""

from __future__ import annotations

import re
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from retro_platform.cli import cli
from retro_platform.cli.common import open_experiment
from retro_platform.corpus.chunk_table import load_chunk_table
from retro_platform.corpus.ingest import ingest
from retro_platform.corpus.remove import remove_documents
from retro_platform.errors import CorpusError
from retro_platform.index.build import open_index
from retro_platform.pipeline import run_index
from retro_platform.pipeline.check import check_store
from retro_platform.store.models import (
    BUILDING,
    Document,
    EmbeddingSet,
    NeighbourSet,
    VectorIndex,
)
from tests.pipeline.helpers import write_experiment, write_stdlib_corpus

NEW_MODULE = "heapq.py"
IVFPQ = {"name": "faiss-ivfpq", "nlist": 4, "nbits": 6}


def index_logged(experiment, store, **flags):
    lines: list[str] = []
    result = run_index(experiment, store, progress=False, log=lines.append, **flags)
    return result, "\n".join(lines)


def add_module(corpus_dir: Path, name: str = NEW_MODULE) -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    shutil.copy(root / name, corpus_dir / name)


def chunk_rows(store, corpus_id: int, document: str) -> np.ndarray:
    with store.session() as session:
        table = load_chunk_table(session, corpus_id)
        doc_id = session.scalar(select(Document.id).where(Document.external_id == document))
    return np.flatnonzero(table.document_ids == doc_id), table


def test_added_documents_are_embedded_alone_and_the_flat_index_equals_a_rebuild(
    experiment_file, corpus_dir: Path
) -> None:
    experiment, store = open_experiment(experiment_file())
    ingest(experiment, store, progress=False)
    first, _ = index_logged(experiment, store)

    add_module(corpus_dir)
    report = ingest(experiment, store, progress=False)
    assert report.added == 1
    second, log = index_logged(experiment, store)
    new_rows, table = chunk_rows(store, second.corpus_id, NEW_MODULE)
    assert len(new_rows) == report.chunks_added > 0
    assert (
        f"{first.embeddings.count} chunks copied from embeddings {first.embeddings.id}, "
        f"{len(new_rows)} embedded" in log
    )
    assert f"added {len(new_rows)} vectors, removed 0 (no rebuild" in log
    assert "building" not in log
    assert second.index.id != first.index.id and first.index.path.exists()  # kept, unchanged

    # the same vectors as embedding everything, the same answers as a rebuilt index
    vectors = np.array(second.embeddings.open())
    assert np.array_equal(vectors[: first.embeddings.count], np.asarray(first.embeddings.open()))
    incremental = open_index(second.index).search(vectors, 5)
    neighbours = np.array(second.neighbours.open())
    rebuilt, log = index_logged(experiment, store, rebuild=True)
    assert "building faiss-flat index" in log
    expected = open_index(rebuilt.index).search(vectors, 5)
    assert np.array_equal(incremental[1], expected[1])
    assert np.allclose(incremental[0], expected[0], atol=1e-5)
    # new chunks got the neighbours a full search gives; existing ones kept theirs
    full = np.asarray(rebuilt.neighbours.open())

    def scores(ids: np.ndarray) -> np.ndarray:  # tie-aware: equal chunks may swap
        return np.einsum("rkd,rd->rk", vectors[table.rows_of(ids)], vectors[new_rows])

    assert (neighbours[new_rows] == full[new_rows]).mean() > 0.95
    assert np.allclose(scores(neighbours[new_rows]), scores(full[new_rows]), atol=1e-5)
    old_rows = np.setdiff1d(np.arange(len(table)), new_rows)
    assert np.array_equal(neighbours[old_rows], np.asarray(first.neighbours.open()))
    assert check_store(store).ok, check_store(store).problems


@pytest.mark.parametrize(
    "retriever", [{"name": "faiss-flat"}, {"name": "faiss-hnsw"}, IVFPQ], ids=lambda r: r["name"]
)
def test_removed_documents_are_never_retrieved_and_new_ones_are_found(
    experiment_file, corpus_dir: Path, retriever
) -> None:
    experiment, store = open_experiment(experiment_file(retriever=retriever))
    ingest(experiment, store, progress=False)
    first, _ = index_logged(experiment, store)
    gone_rows, table = chunk_rows(store, first.corpus_id, "shlex.py")
    gone_ids = table.chunk_ids[gone_rows]
    gone_vectors = np.array(first.embeddings.open()[gone_rows])

    removal = remove_documents(experiment, store, ["shlex.py"])
    assert (removal.removed, removal.chunks_removed) == (1, len(gone_rows))
    (corpus_dir / "shlex.py").unlink()  # else the next ingest adds it back
    add_module(corpus_dir)
    assert ingest(experiment, store, progress=False).added == 1
    second, log = index_logged(experiment, store)

    if retriever["name"] == "faiss-hnsw":
        assert (
            f"faiss-hnsw cannot remove vectors; rebuilding the index ({second.index.count}" in log
        )
    else:
        assert f"removed {len(gone_rows)} (no rebuild" in log
    found = open_index(second.index)
    assert not np.isin(found.stored_ids(), gone_ids).any()
    _, hits = found.search(gone_vectors, 10)
    assert not np.isin(hits, gone_ids).any()
    neighbours = np.asarray(second.neighbours.open())
    assert not np.isin(neighbours, gone_ids).any()

    new_rows, table = chunk_rows(store, second.corpus_id, NEW_MODULE)
    new_vectors = np.array(second.embeddings.open()[new_rows])
    distinct = np.unique(new_vectors, axis=0, return_index=True)[1]  # repeated chunks tie
    _, top = found.search(new_vectors[distinct], 1)
    assert (top[:, 0] == table.chunk_ids[new_rows][distinct]).mean() >= 0.9
    report = check_store(store)
    assert report.ok, report.problems
    assert any("earlier corpus version" in line for line in report.checked)


def test_prune_removes_documents_the_corpus_no_longer_yields(experiment_file, corpus_dir) -> None:
    experiment, store = open_experiment(experiment_file())
    ingest(experiment, store, progress=False)
    index_logged(experiment, store)
    (corpus_dir / "glob.py").unlink()
    assert ingest(experiment, store, progress=False).removed == 0  # only when asked
    report = ingest(experiment, store, prune=True, progress=False)
    assert report.removed == 1 and report.chunks_removed > 0
    assert "1 removed" in report.summary()
    result, log = index_logged(experiment, store)
    assert f"added 0 vectors, removed {report.chunks_removed} (no rebuild" in log
    assert check_store(store).ok


def test_a_killed_update_resumes_to_the_same_result(experiment_file, corpus_dir) -> None:
    experiment, store = open_experiment(experiment_file(retriever=IVFPQ))
    ingest(experiment, store, progress=False)
    index_logged(experiment, store)
    add_module(corpus_dir)
    remove_documents(experiment, store, ["bisect.py"])
    ingest(experiment, store, progress=False)
    done, _ = index_logged(experiment, store)
    vectors, neighbours = np.array(done.embeddings.open()), np.array(done.neighbours.open())
    expected = open_index(done.index).search(vectors, 3)
    # what a kill leaves: half the embeddings and one neighbour row written, the index file
    # not yet renamed into place
    with store.session() as session:
        embedding_set = session.get(EmbeddingSet, done.embeddings.id)
        embedding_set.status, embedding_set.done = BUILDING, embedding_set.count // 2
        session.get(VectorIndex, done.index.id).status = BUILDING
        neighbour_set = session.get(NeighbourSet, done.neighbours.id)
        neighbour_set.status, neighbour_set.done = BUILDING, 1
    half = np.load(done.embeddings.path, mmap_mode="r+")
    half[done.embeddings.count // 2 :] = 0
    half.flush()
    done.embeddings.ids_path.unlink()
    done.index.path.unlink()

    resumed, log = index_logged(experiment, store)
    assert "(no rebuild" in log and "building" not in log
    assert np.array_equal(np.asarray(resumed.embeddings.open()), vectors)
    assert np.array_equal(np.asarray(resumed.neighbours.open()), neighbours)
    again = open_index(resumed.index).search(vectors, 3)
    assert np.array_equal(again[1], expected[1])
    assert check_store(store).ok


def test_recompute_neighbours_searches_every_chunk_again(experiment_file, corpus_dir) -> None:
    experiment, store = open_experiment(experiment_file())
    ingest(experiment, store, progress=False)
    index_logged(experiment, store)
    add_module(corpus_dir)
    ingest(experiment, store, progress=False)
    derived, _ = index_logged(experiment, store)
    recomputed, log = index_logged(experiment, store, recompute_neighbours=True)
    assert recomputed.index == derived.index and "no rebuild" not in log  # the index as it was
    fresh, _ = index_logged(experiment, store, rebuild=True)
    assert np.array_equal(
        np.asarray(recomputed.neighbours.open()), np.asarray(fresh.neighbours.open())
    )


def test_removing_an_unknown_document_is_a_one_line_error(experiment_file) -> None:
    path = experiment_file()
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    with pytest.raises(CorpusError, match=r"no document 'shlx.py'.*did you mean 'shlex.py'"):
        remove_documents(experiment, store, ["shlex.py", "shlx.py"])
    with store.session() as session:
        assert len(load_chunk_table(session, 1)) > 0
    runner = CliRunner()
    result = runner.invoke(cli, ["ingest", str(path), "--remove", "nope.py"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "nothing was removed" in result.output
    result = runner.invoke(cli, ["ingest", str(path), "--remove", "glob.py", "--prune"])
    assert result.exit_code == 2 and "do not go together" in result.output


FACT = "The capital of Zorblaxia is Quennith. Zorblaxia capital city: Quennith.\n"


def test_a_new_fact_is_found_by_search_and_gone_after_removal(tmp_path: Path) -> None:
    corpus = write_stdlib_corpus(tmp_path / "corpus")
    path = write_experiment(
        tmp_path, corpus, retrieval={"chunk_size": 64, "neighbours": 2, "validation_fraction": 0.0}
    )
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, [*args])
        assert result.exit_code == 0, result.output
        return result.output

    run("ingest", str(path))
    first = run("index", str(path))
    chunks = int(re.search(r"embeddings \d+: (\d+) chunks", first).group(1))

    (corpus / "zorblaxia.txt").write_text(FACT)
    assert "1 added" in run("ingest", str(path))
    second = run("index", str(path))
    assert f"{chunks} chunks copied from embeddings" in second
    assert re.search(r"\b2 embedded", second)  # the fact's chunks alone, not a full re-embed
    assert "added 2 vectors, removed 0 (no rebuild" in second
    assert "zorblaxia.txt" in run("search", str(path), "capital of Zorblaxia", "-k", "1")

    assert "removed 1 documents (2 chunks)" in run("ingest", str(path), "--remove", "zorblaxia.txt")
    third = run("index", str(path))
    assert f"{chunks} chunks copied" in third and re.search(r"\b0 embedded", third)
    assert "added 0 vectors, removed 2 (no rebuild" in third
    assert "zorblaxia.txt" not in run("search", str(path), "capital of Zorblaxia", "-k", "5")
    assert "store is consistent" in run("store", "check", str(path))


def test_a_store_indexed_before_the_chunk_id_files_is_updated_too(experiment_file, corpus_dir):
    experiment, store = open_experiment(experiment_file())
    ingest(experiment, store, progress=False)
    first, _ = index_logged(experiment, store)
    first.embeddings.ids_path.unlink()  # as an embedding set made by an earlier release
    again, log = index_logged(experiment, store)
    assert again == first and log == ""
    assert np.array_equal(first.embeddings.chunk_ids(), np.sort(first.embeddings.chunk_ids()))
    add_module(corpus_dir)
    ingest(experiment, store, progress=False)
    _, log = index_logged(experiment, store)
    assert f"{first.embeddings.count} chunks copied" in log and "(no rebuild" in log
