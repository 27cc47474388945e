"""``[retriever] name = "faiss-ivf-ondisk"`` through the pipeline: the index is a folder of
files under the store, built from the memory-mapped embeddings, derived from an earlier version
without changing it, replaced whole by ``--rebuild``, and built by the real CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retro_platform.cli.common import open_experiment
from retro_platform.corpus.chunk_table import load_chunk_table
from retro_platform.corpus.ingest import ingest
from retro_platform.index.build import open_index, open_run_index
from retro_platform.pipeline import run_index
from retro_platform.pipeline.check import check_store
from retro_platform.store.stats import store_stats
from tests.limits import HANG_S
from tests.pipeline.helpers import write_experiment, write_stdlib_corpus
from tests.pipeline.test_incremental import add_module

ROOT = Path(__file__).resolve().parents[2]
#: Every list probed (more than "auto" makes for this corpus): the search is exact.
ONDISK = {"name": "faiss-ivf-ondisk", "nprobe": 4096, "shards": 2}


def digest(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir()}


def neighbour_scores(store, result) -> np.ndarray:
    """The inner product of each chunk with each of its neighbours."""
    with store.session() as session:
        table = load_chunk_table(session, result.corpus_id)
    vectors = np.asarray(result.embeddings.open())
    rows = table.rows_of(np.asarray(result.neighbours.open()))
    return np.einsum("qd,qkd->qk", vectors, vectors[rows])


def indexed(path: Path, **flags):
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    lines: list[str] = []
    result = run_index(experiment, store, progress=False, log=lines.append, **flags)
    return experiment, store, result, "\n".join(lines)


def test_an_on_disk_index_is_built_updated_and_rebuilt_as_a_folder(tmp_path: Path) -> None:
    corpus = write_stdlib_corpus(tmp_path / "corpus")
    (tmp_path / "flat").mkdir()
    _, flat_store, flat, _ = indexed(
        write_experiment(tmp_path / "flat", corpus, retriever={"name": "faiss-flat"})
    )
    (tmp_path / "ondisk").mkdir()
    path = write_experiment(tmp_path / "ondisk", corpus, retriever=ONDISK)
    experiment, store, first, _ = indexed(path)
    folder = first.index.path
    assert folder.is_dir() and folder.suffix == ".ivfdisk"
    assert {"manifest.json", "shard-001.ivfdata"} <= {file.name for file in folder.iterdir()}
    assert not list(folder.parent.glob(".*partial*"))  # the atomic write left nothing behind
    [stats] = store_stats(store)["vector_indexes"]
    assert stats["bytes"] == sum(file.stat().st_size for file in folder.iterdir())
    # every list probed: neighbours as near as exact search's (equal but for ties)
    np.testing.assert_allclose(
        neighbour_scores(store, first), neighbour_scores(flat_store, flat), atol=1e-5
    )

    # a new document: the index is derived from the first (add, no rebuild), which stays
    before = digest(folder)
    add_module(corpus)
    _, _, second, log = indexed(path)
    assert "no rebuild" in log and second.index.path != folder
    assert digest(folder) == before
    derived = open_index(second.index)
    assert derived.size == second.index.count > first.index.count
    assert check_store(store).ok

    # --rebuild writes a new folder over the old one
    stamp = second.index.path.stat().st_mtime_ns
    _, _, third, log = indexed(path, rebuild=True)
    assert third.index.path == second.index.path and "building faiss-ivf-ondisk" in log
    assert third.index.path.stat().st_mtime_ns != stamp
    assert open_index(third.index).size == second.index.count
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.e2e  # two CLI processes: 8 s on 2 quiet cores, 80 s on busy ones
def test_the_cli_builds_an_on_disk_index(tmp_path: Path) -> None:
    corpus = write_stdlib_corpus(tmp_path / "corpus")
    path = write_experiment(tmp_path, corpus, retriever=ONDISK)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for stage in ("ingest", "index"):
        done = subprocess.run(
            [sys.executable, "-m", "retro_platform.cli", stage, str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=HANG_S,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert "built faiss-ivf-ondisk index" in done.stdout
    assert "resizing" not in done.stdout + done.stderr  # Faiss's own lines are kept out
    [folder] = (tmp_path / "store" / "indexes").iterdir()
    assert folder.is_dir() and (folder / "shard-000.ivfdata").is_file()


def test_resident_mib_changes_no_result_and_rebuilds_nothing(tmp_path: Path) -> None:
    """``resident_mib`` is a runtime option: setting it reuses the stored index and neighbours,
    and neighbours searched again under the bound are the same bytes."""
    corpus = write_stdlib_corpus(tmp_path / "corpus")
    path = write_experiment(tmp_path, corpus, retriever={**ONDISK, "nprobe": 8})
    _, _, plain, _ = indexed(path)
    expected = np.array(plain.neighbours.open())

    experiment, store = open_experiment(path, ["retriever.resident_mib=1"])
    lines: list[str] = []
    reused = run_index(experiment, store, progress=False, log=lines.append)
    assert (reused.index.id, reused.neighbours.id) == (plain.index.id, plain.neighbours.id)
    assert not any("building" in line for line in lines), lines
    assert open_run_index(experiment, reused.index).options.resident_mib == 1  # in effect
    again = run_index(
        experiment, store, recompute_neighbours=True, progress=False, log=lambda _: None
    )
    assert np.array_equal(np.array(again.neighbours.open()), expected)


def test_an_update_that_removes_most_of_the_corpus_keeps_the_index_whole(tmp_path: Path) -> None:
    """Most documents pruned and one added: the index is derived from the earlier one (lists
    that lose more than half of their vectors move inside the copied file), and it holds
    exactly the store's chunks and finds the neighbours a rebuild finds."""
    corpus = write_stdlib_corpus(tmp_path / "corpus")
    path = write_experiment(tmp_path, corpus, retriever=ONDISK)
    experiment, store, _, _ = indexed(path)
    for name in ("bisect.py", "colorsys.py", "fnmatch.py", "keyword.py", "glob.py"):
        (corpus / name).unlink()
    add_module(corpus)
    assert ingest(experiment, store, prune=True, progress=False).removed == 5
    lines: list[str] = []
    # neighbours searched again for every chunk, to compare them with the rebuild's below
    updated = run_index(
        experiment, store, recompute_neighbours=True, progress=False, log=lines.append
    )
    assert any("(no rebuild" in line for line in lines), lines
    report = check_store(store)
    assert report.ok, report.problems
    scores = neighbour_scores(store, updated)

    rebuilt = run_index(experiment, store, rebuild=True, progress=False, log=lambda _: None)
    np.testing.assert_allclose(scores, neighbour_scores(store, rebuilt), atol=1e-5)
