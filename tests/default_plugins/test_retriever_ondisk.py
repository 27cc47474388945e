"""``faiss-ivf-ondisk``: what is Faiss's own about an IVF index whose lists stay on disk.

The retriever contract (shapes, ids, padding, loading errors, add and remove) is checked by the
conformance kit in tests/plugin_kit; here: it answers exactly as Faiss's in-memory IVF index
with the same trained quantizer (after large updates too), sharded as unsharded, reads its
vectors in blocks (building and adding), keeps its
files in one folder that moves as a whole, and refuses a damaged lists file."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import faiss
import numpy as np
import pytest

from retro_platform.default_plugins.retrievers.faiss_ivf_ondisk import (
    WORK_PREFIX,
    FaissIVFOnDiskRetriever,
    this_host,
)
from retro_platform.errors import ConfigError, IndexFileError
from retro_platform.plugins import build_plugin
from retro_platform.protocols import VectorRows
from retro_platform.testing.retriever import clustered_vectors, far_ids

DIMENSION = 32


def ondisk(**options) -> FaissIVFOnDiskRetriever:
    return build_plugin("retrievers", {"name": "faiss-ivf-ondisk", **options}, DIMENSION)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3,000 clustered vectors under large unordered ids, and 50 queries."""
    return (
        clustered_vectors(3000, DIMENSION, seed=0),
        far_ids(3000),
        clustered_vectors(50, DIMENSION, seed=1),
    )


def folder_digest(folder: Path) -> dict[str, str]:
    return {file.name: hashlib.sha256(file.read_bytes()).hexdigest() for file in folder.iterdir()}


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("codec", ["flat", "sq8"])
def test_answers_exactly_as_the_in_memory_ivf_index(data, tmp_path: Path, metric, codec) -> None:
    vectors, ids, queries = data
    retriever = ondisk(metric=metric, codec=codec, nlist=16, nprobe=4, block_size=700)
    retriever.build(vectors, ids)
    retriever.save(tmp_path / "index.ivfdisk")
    loaded = ondisk(metric=metric, codec=codec, nlist=16, nprobe=4)
    loaded.load(tmp_path / "index.ivfdisk")

    # Faiss's own in-memory IVF index over the same trained quantizer, every vector at once
    memory = faiss.read_index(str(tmp_path / "index.ivfdisk" / "trained.index"))
    assert isinstance(
        memory, faiss.IndexIVFFlat if codec == "flat" else faiss.IndexIVFScalarQuantizer
    )
    memory.add_with_ids(vectors, ids)
    memory.nprobe = 4
    distances, expected = memory.search(queries, 10)
    expected_scores = -distances if metric == "l2" else distances

    for index in (retriever, loaded):
        scores, found = index.search(queries, 10)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_array_equal(scores, expected_scores)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_sharded_index_answers_as_the_unsharded_one(data, tmp_path: Path, metric) -> None:
    vectors, ids, queries = data
    whole = ondisk(metric=metric, nlist=16, nprobe=6)
    whole.build(vectors, ids)
    sharded = ondisk(metric=metric, nlist=16, nprobe=6, shards=3)
    sharded.build(vectors, ids)
    assert len(sharded.shard_indexes) == 3
    assert [shard.ntotal for shard in sharded.shard_indexes] == [1000, 1000, 1000]
    assert sorted(sharded.stored_ids().tolist()) == sorted(ids.tolist())

    sharded.save(tmp_path / "sharded.ivfdisk")
    loaded = ondisk(metric=metric, nlist=16, nprobe=6, shards=3)
    loaded.load(tmp_path / "sharded.ivfdisk")
    expected_scores, expected = whole.search(queries, 10)
    for index in (sharded, loaded):
        scores, found = index.search(queries, 10)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, atol=1e-6)


def test_the_build_reads_the_vectors_in_blocks(tmp_path: Path) -> None:
    """The build holds a block and the training sample, never every vector: numpy's peak
    allocation while building over a memory-mapped file stays far below the file's size (and
    a block as large as the file shows that the measurement sees a whole copy)."""
    n = 40_000
    path = tmp_path / "vectors.npy"
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIMENSION))
    stored[:] = clustered_vectors(n, DIMENSION)
    stored.flush()
    del stored
    every = n * DIMENSION * 4  # 5 MB

    def peak_while_building(block_size: int) -> int:
        vectors = np.load(path, mmap_mode="r")
        rows = VectorRows(vectors, np.arange(n))
        retriever = ondisk(nlist=16, train_size=1000, block_size=block_size)
        tracemalloc.start()
        try:
            retriever.build(rows, np.arange(n, dtype=np.int64))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert retriever.size == n

    assert peak_while_building(2000) < every / 4
    assert peak_while_building(n) > every


def test_add_reads_the_new_vectors_in_blocks(tmp_path: Path) -> None:
    """Adding to a loaded index holds one block of the new vectors, as the build does (128
    dimensions, so that the new ids' own bookkeeping, 8 bytes a vector, is small beside them)."""
    n, dimension = 40_000, 128
    path = tmp_path / "new.npy"
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dimension))
    stored[:] = clustered_vectors(n, dimension, seed=3)
    stored.flush()
    del stored
    every = n * dimension * 4  # 20 MB
    folder = tmp_path / "index.ivfdisk"
    options = {"name": "faiss-ivf-ondisk", "nlist": 16}
    built = build_plugin("retrievers", options, dimension)
    built.build(clustered_vectors(3000, dimension), far_ids(3000))
    built.save(folder)

    def peak_while_adding(block_size: int) -> int:
        retriever = build_plugin("retrievers", {**options, "block_size": block_size}, dimension)
        retriever.load(folder)  # what the core adds to
        rows = VectorRows(np.load(path, mmap_mode="r"), np.arange(n))
        tracemalloc.start()
        try:
            retriever.add(rows, np.arange(n, dtype=np.int64) + 2**60)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert retriever.size == n + 3000

    assert peak_while_adding(2000) < every / 4
    assert peak_while_adding(n) > every


@pytest.mark.parametrize("shards", [1, 2])
def test_a_loaded_index_after_large_updates_answers_as_the_in_memory_one(
    data, tmp_path: Path, shards, capfd: pytest.CaptureFixture[str]
) -> None:
    """Four in five of a loaded index's vectors removed (a list that loses more than half is
    moved in its file), then more added than were kept (lists grow): it answers exactly as
    Faiss's in-memory IVF index holding the same vectors, before and after a save."""
    vectors, ids, queries = data
    built = ondisk(nlist=16, nprobe=4, shards=shards)
    built.build(vectors, ids)
    built.save(tmp_path / "first.ivfdisk")
    updated = ondisk(nlist=16, nprobe=4, shards=shards, block_size=500)
    updated.load(tmp_path / "first.ivfdisk")
    kept = np.arange(len(ids)) % 5 == 0
    assert updated.remove(ids[~kept]) == (~kept).sum()
    new_vectors, new_ids = clustered_vectors(3000, DIMENSION, seed=2), far_ids(3000, 3) + 2**52
    updated.add(VectorRows(new_vectors, np.arange(3000)), new_ids)
    assert "resizing" not in capfd.readouterr().out  # Faiss's own lines are kept out
    updated.save(tmp_path / "second.ivfdisk")
    again = ondisk(nlist=16, nprobe=4, shards=shards)
    again.load(tmp_path / "second.ivfdisk")

    memory = faiss.read_index(str(tmp_path / "first.ivfdisk" / "trained.index"))
    memory.add_with_ids(vectors[kept], ids[kept])
    memory.add_with_ids(new_vectors, new_ids)
    memory.nprobe = 4
    expected_scores, expected = memory.search(np.concatenate([queries, new_vectors[:50]]), 10)
    for index in (updated, again):
        assert np.array_equal(
            np.sort(index.stored_ids()), np.sort(np.concatenate([ids[kept], new_ids]))
        )
        scores, found = index.search(np.concatenate([queries, new_vectors[:50]]), 10)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("codec", ["flat", "sq8"])
def test_a_list_cut_down_to_one_vector_keeps_its_id(data, tmp_path: Path, codec) -> None:
    """A list that keeps one vector of hundreds: Faiss frees the old slot as if its size in
    vectors were bytes, so the shrunk list could be given the start of its own slot, and its
    id was then read from where the codes were (a garbage id, found by searches)."""
    vectors, ids, queries = data
    built = ondisk(nlist=4, nprobe=4, codec=codec)
    built.build(vectors, ids)
    built.save(tmp_path / "first.ivfdisk")
    memory = faiss.read_index(str(tmp_path / "first.ivfdisk" / "trained.index"))
    _, lists = memory.quantizer.search(vectors, 1)
    kept = np.zeros(len(ids), dtype=bool)
    kept[np.unique(lists[:, 0], return_index=True)[1]] = True  # the first vector of each list
    updated = ondisk(nlist=4, nprobe=4, codec=codec)
    updated.load(tmp_path / "first.ivfdisk")
    assert updated.remove(ids[~kept]) == (~kept).sum()
    assert np.array_equal(np.sort(updated.stored_ids()), np.sort(ids[kept]))
    _, found = updated.search(vectors[kept], 1)
    assert np.array_equal(found[:, 0], ids[kept])


def test_the_index_is_a_folder_that_moves_as_a_whole(data, tmp_path: Path) -> None:
    vectors, ids, queries = data
    retriever = ondisk(nlist=16, shards=2)
    retriever.build(vectors, ids)
    retriever.save(tmp_path / "first" / "index.ivfdisk")
    names = sorted(path.name for path in (tmp_path / "first" / "index.ivfdisk").iterdir())
    assert names == [
        "manifest.json",
        "shard-000.index",
        "shard-000.ivfdata",
        "shard-001.index",
        "shard-001.ivfdata",
        "trained.index",
    ]
    moved = tmp_path / "elsewhere" / "renamed.ivfdisk"
    moved.parent.mkdir()
    shutil.move(tmp_path / "first" / "index.ivfdisk", moved)
    loaded = ondisk(nlist=16, shards=2)
    loaded.load(moved)
    for shard, number in zip(loaded.shard_indexes, range(2), strict=True):
        lists = faiss.downcast_InvertedLists(shard.invlists)
        assert isinstance(lists, faiss.OnDiskInvertedLists)  # mapped, not read into memory
        assert Path(lists.filename) == moved / f"shard-{number:03d}.ivfdata"
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], retriever.search(queries, 5)[1])


@pytest.mark.parametrize("damage", ["short garbage", "same-size garbage", "missing"])
def test_a_damaged_lists_file_is_an_index_file_error(data, tmp_path: Path, damage) -> None:
    vectors, ids, _ = data
    retriever = ondisk(nlist=16)
    retriever.build(vectors, ids)
    folder = tmp_path / "index.ivfdisk"
    retriever.save(folder)
    lists = folder / "shard-000.ivfdata"
    if damage == "short garbage":
        lists.write_bytes(b"not inverted lists\x00\xff" * 10)
    elif damage == "same-size garbage":
        lists.write_bytes(np.random.default_rng(0).bytes(lists.stat().st_size))
    else:
        lists.unlink()
    with pytest.raises(IndexFileError, match="shard-000.ivfdata"):
        ondisk(nlist=16).load(folder)


def test_a_damaged_manifest_or_header_is_an_index_file_error(data, tmp_path: Path) -> None:
    vectors, ids, _ = data
    retriever = ondisk(nlist=16)
    retriever.build(vectors, ids)
    folder = tmp_path / "index.ivfdisk"
    retriever.save(folder)
    (folder / "shard-000.index").write_bytes(b"garbage" * 30)
    with pytest.raises(IndexFileError, match="not a readable Faiss index"):
        ondisk(nlist=16).load(folder)
    (folder / "manifest.json").write_text("{")
    with pytest.raises(IndexFileError, match="manifest"):
        ondisk(nlist=16).load(folder)
    with pytest.raises(IndexFileError, match="metric"):
        retriever.save(tmp_path / "ip.ivfdisk")
        ondisk(nlist=16, metric="l2").load(tmp_path / "ip.ivfdisk")


def test_add_and_remove_leave_the_loaded_folder_unchanged(data, tmp_path: Path) -> None:
    """An index derived from an earlier version (load, remove, add, save elsewhere) never
    changes the earlier version's files."""
    vectors, ids, queries = data
    built = ondisk(nlist=16, shards=2)
    built.build(vectors[:2000], ids[:2000])
    earlier = tmp_path / "earlier.ivfdisk"
    built.save(earlier)
    before = folder_digest(earlier)

    derived = ondisk(nlist=16, shards=2)
    derived.load(earlier)
    assert derived.remove(ids[:100]) == 100
    derived.add(vectors[2000:], ids[2000:])
    assert derived.size == 2900
    derived.save(tmp_path / "later.ivfdisk")
    assert folder_digest(earlier) == before

    later = ondisk(nlist=16, shards=2)
    later.load(tmp_path / "later.ivfdisk")
    assert later.size == 2900
    assert sorted(later.stored_ids().tolist()) == sorted(ids[100:].tolist())
    manifest = json.loads((tmp_path / "later.ivfdisk" / "manifest.json").read_text())
    assert [shard["vectors"] for shard in manifest["shards"]] == [900, 2000]  # grew the last
    _, found = later.search(vectors[2000:2100], 1)
    assert (found[:, 0] == ids[2000:2100]).mean() > 0.9


def test_options_that_cannot_work_are_config_errors(data) -> None:
    vectors, ids, _ = data
    with pytest.raises(ConfigError, match="nlist = 500 needs at least 19,500 vectors"):
        ondisk(nlist=500).build(vectors, ids)
    with pytest.raises(ConfigError, match="codec"):
        ondisk(codec="pq")


def test_lists_being_built_go_to_temp_dir_and_leave_with_the_retriever(data, tmp_path) -> None:
    vectors, ids, _ = data
    retriever = ondisk(nlist=16, shards=2, temp_dir=str(tmp_path / "work"))
    retriever.build(vectors, ids)
    [work] = (tmp_path / "work").iterdir()
    assert len(list(work.glob("*.ivfdata"))) == 2
    del retriever
    gc.collect()
    assert not work.exists()


def test_working_folders_of_killed_processes_are_removed(data, tmp_path: Path) -> None:
    """A build removes the working folders that processes of this machine left when they were
    killed; a running process's folder and another machine's are kept."""
    vectors, ids, _ = data
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    host = this_host()
    left = {
        "killed": tmp_path / f"{WORK_PREFIX}{host}-{int(gone.stdout)}-abc123",
        "running": tmp_path / f"{WORK_PREFIX}{host}-{os.getpid()}-def456",
        "elsewhere": tmp_path / f"{WORK_PREFIX}0000beef-{int(gone.stdout)}-ghi789",
    }
    for folder in left.values():
        folder.mkdir()
        (folder / "lists-00001.ivfdata").write_bytes(b"\0" * 1000)
    retriever = ondisk(nlist=16, temp_dir=str(tmp_path))
    retriever.build(vectors, ids)
    assert not left["killed"].exists()
    assert left["running"].exists() and left["elsewhere"].exists()
    [mine] = [
        f for f in tmp_path.glob(f"{WORK_PREFIX}{host}-{os.getpid()}-*") if f != left["running"]
    ]
    del retriever
    gc.collect()
    assert not mine.exists()  # its own folder goes with the instance
