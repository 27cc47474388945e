"""The built-in Faiss retrievers: ``faiss-flat``, ``faiss-ivfpq`` and ``faiss-hnsw``.

The retriever contract every one keeps (shapes, ids, padding, sorting, loading errors, ...) is
checked by the conformance kit in tests/plugin_kit; here, what is Faiss's own."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import faiss
import numpy as np
import pytest

from retro_platform.errors import ConfigError, IndexFileError
from retro_platform.plugins import build_plugin
from retro_platform.protocols import MISSING

NAMES = ["faiss-flat", "faiss-ivfpq", "faiss-hnsw"]


def retriever(name: str, dimension: int, **options):
    return build_plugin("retrievers", {"name": name, **options}, dimension)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def far_ids(n: int, seed: int = 0) -> np.ndarray:
    """Large, non-contiguous, unordered int64 ids, as chunk primary keys may be."""
    rng = np.random.default_rng(seed)
    return rng.choice(2**50, size=n, replace=False).astype(np.int64) + 2**40


@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    """2,000 unit vectors in 40 clusters of 32 dimensions."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32))
    points = centres[rng.integers(0, 40, 2000)] + 0.35 * rng.standard_normal((2000, 32))
    return unit(points)


@pytest.fixture(scope="module")
def stdlib_vectors() -> np.ndarray:
    """About 2,000 real vectors: hashed features of the standard library's own source."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(root.glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        texts.extend(source[i : i + 400] for i in range(0, len(source), 400))
        if len(texts) >= 2000:
            break
    vectors = build_plugin("embedders", {"name": "hashing"}).embed(texts[:2000])
    return vectors[np.linalg.norm(vectors, axis=1) > 0]


def brute_force(base: np.ndarray, queries: np.ndarray, k: int, metric: str):
    if metric == "ip":
        scores = queries @ base.T
    else:
        scores = -((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def recall(found: np.ndarray, base: np.ndarray, queries: np.ndarray, ids: np.ndarray, k: int):
    """Tie-aware recall@k: a result counts if it is as near as the true k-th neighbour."""
    true_scores, _ = brute_force(base, queries, k, "ip")
    row_of = {int(chunk): row for row, chunk in enumerate(ids)}
    rows = np.array([[row_of.get(int(i), -1) for i in line] for line in found])
    scores = np.where(rows >= 0, np.einsum("qd,qkd->qk", queries, base[rows]), -np.inf)
    return float((scores >= true_scores[:, -1:] - 1e-5).mean())


# --- faiss-flat is exact ---------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_brute_force(clustered: np.ndarray, metric: str) -> None:
    ids = far_ids(len(clustered))
    flat = retriever("faiss-flat", 32, metric=metric)
    flat.build(clustered, ids)
    queries = clustered[:50] + 0.01
    scores, found = flat.search(queries, 10)
    true_scores, rows = brute_force(clustered, queries.astype(np.float32), 10, metric)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    np.testing.assert_allclose(scores, true_scores, rtol=1e-4, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first, higher is nearer
    assert np.array_equal(found, ids[rows])


def test_an_empty_flat_index_finds_nothing() -> None:
    index = retriever("faiss-flat", 4)
    index.build(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    _, found = index.search(np.ones((2, 4), np.float32), 3)
    assert index.size == 0 and (found == MISSING).all()


# --- saving and loading ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_give_the_same_results(
    clustered: np.ndarray, name: str, tmp_path: Path
) -> None:
    ids = far_ids(len(clustered), seed=3)
    index = retriever(name, 32)
    index.build(clustered, ids)
    index.save(tmp_path / "vectors.index")
    loaded = retriever(name, 32)
    loaded.load(tmp_path / "vectors.index")
    assert loaded.size == index.size
    assert np.array_equal(np.sort(loaded.stored_ids()), np.sort(ids))
    for k in (2, 10):
        before, after = index.search(clustered[:100], k), loaded.search(clustered[:100], k)
        assert np.array_equal(before[1], after[1])
        assert np.array_equal(before[0], after[0])


def test_hnsw_returns_k_hits_for_a_k_far_above_ef_search(clustered: np.ndarray) -> None:
    hnsw = retriever("faiss-hnsw", 32, efSearch=16)
    hnsw.build(clustered, np.arange(len(clustered)))
    scores, ids = hnsw.search(clustered[:10], 1500)  # Faiss alone returned 102 to 177 each
    assert (ids >= 0).all() and np.isfinite(scores).all()
    assert all(len(set(row)) == 1500 for row in ids.tolist())
    assert faiss.downcast_index(hnsw.index.index).hnsw.efSearch == 16  # the option as it was


def test_search_time_options_apply_to_a_loaded_index(clustered: np.ndarray, tmp_path: Path) -> None:
    hnsw = retriever("faiss-hnsw", 32, efSearch=16)
    hnsw.build(clustered, np.arange(len(clustered)))
    hnsw.save(tmp_path / "hnsw.index")
    wider = retriever("faiss-hnsw", 32, efSearch=200)
    wider.load(tmp_path / "hnsw.index")
    assert faiss.downcast_index(wider.index.index).hnsw.efSearch == 200

    ivf = retriever("faiss-ivfpq", 32, nprobe=2, k_factor=2)
    ivf.build(clustered, np.arange(len(clustered)))
    ivf.save(tmp_path / "ivf.index")
    wider = retriever("faiss-ivfpq", 32, nprobe=7, k_factor=5)
    wider.load(tmp_path / "ivf.index")
    refine = faiss.downcast_index(wider.index.index)
    assert refine.k_factor == 5 and faiss.downcast_index(refine.base_index).nprobe == 7


@pytest.mark.parametrize("name", NAMES)
def test_a_corrupt_file_is_an_index_file_error(
    clustered: np.ndarray, name: str, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.index"
    garbage.write_bytes(b"this is not a faiss index at all" * 10)
    with pytest.raises(IndexFileError, match="is not a readable Faiss index") as error:
        retriever(name, 32).load(garbage)
    assert "\n" not in str(error.value)

    index = retriever(name, 32)
    index.build(clustered, np.arange(len(clustered)))
    index.save(tmp_path / "good.index")
    data = (tmp_path / "good.index").read_bytes()
    (tmp_path / "cut.index").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="is not a readable Faiss index"):
        retriever(name, 32).load(tmp_path / "cut.index")


def test_an_index_of_another_dimension_kind_or_metric_is_refused(
    clustered: np.ndarray, tmp_path: Path
) -> None:
    flat = retriever("faiss-flat", 32)
    flat.build(clustered, np.arange(len(clustered)))
    flat.save(tmp_path / "flat.index")
    with pytest.raises(IndexFileError, match="holds 32-dimensional vectors.* 64-dimensional"):
        retriever("faiss-flat", 64).load(tmp_path / "flat.index")
    with pytest.raises(IndexFileError, match="not a faiss-hnsw index"):
        retriever("faiss-hnsw", 32).load(tmp_path / "flat.index")
    with pytest.raises(IndexFileError, match="metric 'ip'.* metric 'l2'"):
        retriever("faiss-flat", 32, metric="l2").load(tmp_path / "flat.index")
    bare = faiss.IndexFlatIP(32)  # a Faiss index without our id map
    faiss.write_index(bare, str(tmp_path / "bare.index"))
    with pytest.raises(IndexFileError, match="IndexFlatIP index, not a faiss-flat index"):
        retriever("faiss-flat", 32).load(tmp_path / "bare.index")


# --- faiss-ivfpq options ---------------------------------------------------------------------


def test_ivfpq_nlist_too_large_is_a_config_error(clustered: np.ndarray) -> None:
    index = retriever("faiss-ivfpq", 32, nlist=1000)
    with pytest.raises(ConfigError, match=r"nlist = 1000 needs at least 39,000 vectors .* 2,000"):
        index.build(clustered, np.arange(len(clustered)))
    limited = retriever("faiss-ivfpq", 32, nlist=40, train_size=1000)
    with pytest.raises(ConfigError, match="train_size is 1,000"):
        limited.build(clustered, np.arange(len(clustered)))


def test_ivfpq_auto_works_on_a_small_corpus(clustered: np.ndarray) -> None:
    index = retriever("faiss-ivfpq", 32)
    small = clustered[:300]
    index.build(small, np.arange(300))
    assert index.nlist_for(300) == 7  # 300 // 39: every list gets 39 training vectors
    assert index.nlist_for(100_000) == round(4 * 100_000**0.5)
    _, found = index.search(small[:10], 2)
    assert np.array_equal(found[:, 0], np.arange(10))


def test_ivfpq_too_few_vectors_for_the_codes_is_a_config_error(clustered: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="nbits = 8 needs at least 256 vectors to train, got 100"):
        retriever("faiss-ivfpq", 32).build(clustered[:100], np.arange(100))
    retriever("faiss-ivfpq", 32, nbits=4).build(clustered[:100], np.arange(100))


def test_ivfpq_m_must_divide_the_dimension() -> None:
    with pytest.raises(ConfigError, match="m = 5 does not divide the embedding dimension 32"):
        retriever("faiss-ivfpq", 32, m=5)
    assert retriever("faiss-ivfpq", 384).m == 48
    assert retriever("faiss-ivfpq", 100).m == 10
    with pytest.raises(ConfigError, match="nlist"):
        retriever("faiss-ivfpq", 32, nlist=0)


def test_unknown_and_invalid_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown option 'efsearch'.*did you mean 'efSearch'"):
        retriever("faiss-hnsw", 8, efsearch=10)
    with pytest.raises(ConfigError, match="metric"):
        retriever("faiss-flat", 8, metric="cosine")


def test_bad_arguments_are_refused(clustered: np.ndarray) -> None:
    index = retriever("faiss-flat", 32)
    with pytest.raises(RuntimeError, match="call build"):
        index.search(clustered[:1], 1)
    with pytest.raises(ValueError, match="not unique"):
        index.build(clustered[:3], np.array([1, 2, 1]))
    index.build(clustered, np.arange(len(clustered)))
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        index.search(clustered[:2, :16], 1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(clustered[:2], 0)


# --- approximate recall ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["faiss-ivfpq", "faiss-hnsw"])
def test_approximate_recall_on_real_vectors(stdlib_vectors: np.ndarray, name: str) -> None:
    base, queries = stdlib_vectors[200:], stdlib_vectors[:200]
    ids = far_ids(len(base), seed=4)
    index = retriever(name, base.shape[1])
    index.build(base, ids)
    for k in (2, 10):
        _, found = index.search(queries, k)
        assert recall(found, base, queries, ids, k) >= 0.9, (name, k)


@pytest.mark.parametrize("name", ["faiss-ivfpq", "faiss-hnsw"])
def test_approximate_recall_on_clustered_vectors(clustered: np.ndarray, name: str) -> None:
    base, queries = clustered[100:], clustered[:100]
    ids = far_ids(len(base), seed=5)
    index = retriever(name, 32)
    index.build(base, ids)
    _, found = index.search(queries, 10)
    assert recall(found, base, queries, ids, 10) >= 0.9


@pytest.mark.parametrize("name", NAMES)
def test_every_option_is_documented(name: str) -> None:
    from retro_platform.plugins import get_registration

    docs = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    section = docs.split(f"#### `{name}`", 1)[1].split("\n#", 1)[0]
    for option in get_registration("retrievers", name).factory.Options.model_fields:
        assert f"| `{option}` |" in section, f"docs/plugins.md: {name} option {option}"


# --- updating a built index: add and remove ---------------------------------------------------

UPDATE_OPTIONS = {"faiss-ivfpq": {"nlist": 8, "nbits": 6}}


@pytest.mark.parametrize("name", NAMES)
def test_added_vectors_are_found_and_the_ids_stay_unique(name: str, clustered, tmp_path) -> None:
    ids = far_ids(len(clustered))
    built = retriever(name, 32, **UPDATE_OPTIONS.get(name, {}))
    built.build(clustered[:1500], ids[:1500])
    built.add(clustered[1500:], ids[1500:])
    assert built.size == 2000
    assert set(built.stored_ids().tolist()) == set(ids.tolist())
    _, found = built.search(clustered[1500:1600], 1)
    if name == "faiss-ivfpq":  # added under the trained lists: as if given all at once
        whole = retriever(name, 32, **UPDATE_OPTIONS[name])
        whole.build(clustered[:1500], ids[:1500])
        whole.index.reset()
        whole.index.add_with_ids(clustered, ids)
        assert np.array_equal(found, whole.search(clustered[1500:1600], 1)[1])
    else:
        assert (found[:, 0] == ids[1500:1600]).mean() >= 0.95
    with pytest.raises(ValueError, match="not new"):
        built.add(clustered[:1], ids[:1])
    built.save(tmp_path / "grown.index")  # the grown index survives a save and a load
    loaded = retriever(name, 32, **UPDATE_OPTIONS.get(name, {}))
    loaded.load(tmp_path / "grown.index")
    queries = clustered[1500:1600]
    assert np.array_equal(loaded.search(queries, 3)[1], built.search(queries, 3)[1])


@pytest.mark.parametrize("name", ["faiss-flat", "faiss-ivfpq"])
@pytest.mark.parametrize("refine", [True, False])
def test_removed_vectors_are_never_returned_and_the_rest_keep_their_ids(
    name: str, refine: bool, clustered, tmp_path
) -> None:
    if name == "faiss-flat" and not refine:
        pytest.skip("refine is an IVF-PQ option")
    options = dict(UPDATE_OPTIONS.get(name, {}))
    if name == "faiss-ivfpq":
        options["refine"] = refine
    ids = far_ids(len(clustered))
    updated = retriever(name, 32, **options)
    updated.build(clustered, ids)
    gone = np.random.default_rng(1).choice(len(ids), 300, replace=False)
    assert updated.remove(np.concatenate([ids[gone], [7]])) == 300  # an unknown id is ignored
    keep = np.setdiff1d(np.arange(len(ids)), gone)
    assert updated.size == len(keep)
    assert set(updated.stored_ids().tolist()) == set(ids[keep].tolist())

    # the same trained index given only the kept vectors answers the same
    fresh = retriever(name, 32, **options)
    fresh.build(clustered, ids)
    fresh.index.reset()
    fresh.index.add_with_ids(clustered[keep], ids[keep])
    scores, found = updated.search(clustered, 10)
    expected_scores, expected = fresh.search(clustered, 10)
    assert not np.isin(found, ids[gone]).any()
    assert np.allclose(scores, expected_scores, atol=1e-5)
    # the same ids, up to the order of equal scores (PQ codes tie; a removal reorders a list)
    for row in range(len(found)):
        sure = scores[row] > scores[row, -1] + 1e-5
        assert set(found[row, sure]) == set(expected[row, sure])
    updated.save(tmp_path / "shrunk.index")
    loaded = retriever(name, 32, **options)
    loaded.load(tmp_path / "shrunk.index")
    assert np.array_equal(loaded.search(clustered, 10)[1], found)


def test_hnsw_cannot_remove_and_stays_as_it_was(clustered) -> None:
    ids = far_ids(len(clustered))
    hnsw = retriever("faiss-hnsw", 32)
    hnsw.build(clustered, ids)
    before = hnsw.search(clustered[:50], 5)
    with pytest.raises(NotImplementedError, match="faiss-hnsw cannot remove"):
        hnsw.remove(ids[:10])
    assert hnsw.size == len(ids)
    assert np.array_equal(hnsw.search(clustered[:50], 5)[1], before[1])
