"""The ``scann`` retriever on real ScaNN builds: recall, ids, files, options, updates, discovery.

Small data throughout (a few thousand vectors of 32 dimensions), so each test takes seconds.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

pytest.importorskip("scann", reason="ScaNN is not installed (pip install 'scann>=1.4,<1.5')")

from retro_platform_scann import MIN_TREE_VECTORS, ScannOptions, ScannRetriever  # noqa: E402

from retro_platform import plugins  # noqa: E402
from retro_platform.errors import ConfigError, IndexFileError  # noqa: E402
from retro_platform.plugins import build_plugin  # noqa: E402
from retro_platform.protocols import MISSING  # noqa: E402
from retro_platform.testing import RetrieverContract  # noqa: E402

DIM = 32
METRICS = ["ip", "l2"]


def scann(dimension: int = DIM, **options) -> ScannRetriever:
    return ScannRetriever(ScannOptions(**options), dimension)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def far_ids(n: int, seed: int = 0) -> np.ndarray:
    """Large, unordered int64 ids, as chunk primary keys may be."""
    rng = np.random.default_rng(seed)
    return rng.choice(2**62, size=n, replace=False).astype(np.int64) + 2**40


@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    """3,000 unit vectors in 60 clusters of 32 dimensions (enough for a tree)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((60, DIM))
    points = centres[rng.integers(0, 60, 3000)] + 0.35 * rng.standard_normal((3000, DIM))
    return unit(points)


@pytest.fixture(scope="module")
def random_vectors() -> np.ndarray:
    """3,000 Gaussian vectors: no structure for the tree to find, the hard case."""
    return np.random.default_rng(1).standard_normal((3000, DIM)).astype(np.float32)


def queries_near(base: np.ndarray, n: int = 200, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return base[rng.integers(0, len(base), n)] + 0.1 * rng.standard_normal((n, DIM)).astype(
        np.float32
    )


def exact(base: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Every query's score against every base vector, higher is nearer: ``(q, n)``."""
    if metric == "ip":
        return queries @ base.T
    return -((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1)


def recall(found: np.ndarray, base, queries, ids: np.ndarray, k: int, metric: str) -> float:
    """Tie-aware recall@k: a result counts if it is as near as the true k-th neighbour."""
    scores = exact(base, queries, metric)
    kth = -np.sort(-scores, axis=1)[:, k - 1 : k]
    row_of = {int(chunk): row for row, chunk in enumerate(ids)}
    rows = np.array([[row_of.get(int(i), -1) for i in line] for line in found])
    got = np.where(rows >= 0, np.take_along_axis(scores, np.maximum(rows, 0), axis=1), -np.inf)
    return float((got >= kth - 1e-4).mean())


# --- search quality and the shape of answers -------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_recall_on_clustered_vectors(clustered: np.ndarray, metric: str) -> None:
    index = scann(metric=metric)
    ids = far_ids(len(clustered))
    index.build(clustered, ids)
    assert index.num_leaves == round(len(clustered) ** 0.5)  # a tree, not brute force
    queries = queries_near(clustered)
    _, found = index.search(queries, 10)
    assert recall(found, clustered, queries, ids, 10, metric) >= 0.95


@pytest.mark.parametrize("metric", METRICS)
def test_recall_on_random_vectors_with_every_leaf_searched(
    random_vectors: np.ndarray, metric: str
) -> None:
    index = scann(metric=metric, num_leaves=50, leaves_to_search=50, reorder=200)
    ids = np.arange(len(random_vectors))
    index.build(random_vectors, ids)
    queries = np.random.default_rng(3).standard_normal((200, DIM)).astype(np.float32)
    _, found = index.search(queries, 10)
    assert recall(found, random_vectors, queries, ids, 10, metric) >= 0.9


@pytest.mark.parametrize("metric", METRICS)
def test_answers_are_exact_scores_best_first(clustered: np.ndarray, metric: str) -> None:
    index = scann(metric=metric)
    ids = far_ids(len(clustered), seed=5)
    index.build(clustered, ids)
    queries = queries_near(clustered, 50)
    scores, found = index.search(queries, 7)
    assert scores.shape == found.shape == (50, 7)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert np.isin(found, ids).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    rows = {int(chunk): row for row, chunk in enumerate(ids)}
    expected = np.take_along_axis(
        exact(clustered, queries, metric), np.vectorize(rows.get)(found), axis=1
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)  # re-scored exactly


def test_a_single_thread_answers_like_many(clustered: np.ndarray) -> None:
    ids = far_ids(len(clustered))
    one, many = scann(threads=1), scann(threads=2, query_batch_size=7)
    one.build(clustered, ids)
    many.build(clustered, ids)
    queries = queries_near(clustered, 40)
    one_scores, one_ids = one.search(queries, 5)
    many_scores, many_ids = many.search(queries, 5)
    np.testing.assert_array_equal(one_ids, many_ids)
    # the batched kernels may round the last bit differently from one query at a time
    np.testing.assert_allclose(one_scores, many_scores, rtol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_a_small_corpus_is_searched_exactly(clustered: np.ndarray, metric: str) -> None:
    base = clustered[:300]
    ids = far_ids(300, seed=7)
    index = scann(metric=metric)
    index.build(base, ids)
    assert index.num_leaves == 0 and len(base) < MIN_TREE_VECTORS
    queries = queries_near(base, 30)
    scores, found = index.search(queries, 5)
    want = -np.sort(-exact(base, queries, metric), axis=1)[:, :5]
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-4)
    assert recall(found, base, queries, ids, 5, metric) == 1.0


@pytest.mark.parametrize("n", [0, 1, 3])
def test_k_beyond_the_index_is_padded(clustered: np.ndarray, n: int) -> None:
    index = scann()
    index.build(clustered[:n], far_ids(n))
    scores, found = index.search(clustered[:4], 5)
    assert (found[:, n:] == MISSING).all() and np.isneginf(scores[:, n:]).all()
    assert (found[:, :n] != MISSING).all() and np.isfinite(scores[:, :n]).all()


def test_k_beyond_a_tree_index_is_padded(clustered: np.ndarray) -> None:
    base = clustered[:1100]
    index = scann(num_leaves=10, leaves_to_search=2)
    index.build(base, far_ids(len(base)))
    scores, found = index.search(queries_near(base, 5), 1500)
    assert scores.shape == found.shape == (5, 1500)
    missing = found == MISSING
    assert missing[:, 1100:].all() and (missing == np.isneginf(scores)).all()
    for row in found:
        kept = row[row != MISSING]
        assert len(kept) == len(set(kept.tolist())) > 0


def test_bad_arguments_are_refused(clustered: np.ndarray) -> None:
    index = scann()
    with pytest.raises(RuntimeError, match="build\\(\\) or load\\(\\)"):
        index.search(clustered[:1], 3)
    with pytest.raises(ValueError, match="shape"):
        index.build(clustered[:, :8], np.arange(len(clustered)))
    with pytest.raises(ValueError, match="not unique"):
        index.build(clustered[:3], np.array([1, 1, 2]))
    index.build(clustered[:100], np.arange(100))
    for k in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            index.search(clustered[:1], k)


# --- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3000, 200])  # a tree, brute force
def test_save_and_load_give_the_same_results(clustered: np.ndarray, tmp_path: Path, n: int) -> None:
    index = scann(metric="l2")
    ids = far_ids(n)
    index.build(clustered[:n], ids)
    path = tmp_path / f"index{ScannRetriever.file_suffix}"
    index.save(path)
    assert path.is_file() and list(tmp_path.iterdir()) == [path]
    loaded = scann(metric="l2")
    loaded.load(path)
    assert loaded.size == n and loaded.num_leaves == index.num_leaves
    np.testing.assert_array_equal(loaded.stored_ids(), index.stored_ids())
    queries = queries_near(clustered, 60)
    for got, want in zip(loaded.search(queries, 10), index.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_missing_or_unreadable_file_is_an_index_file_error(
    clustered: np.ndarray, tmp_path: Path
) -> None:
    with pytest.raises(IndexFileError, match="does not exist"):
        scann().load(tmp_path / "nothing.scann")
    garbage = tmp_path / "garbage.scann"
    garbage.write_bytes(b"this is not a scann index at all" * 10)
    with pytest.raises(IndexFileError, match="not a readable scann index") as error:
        scann().load(garbage)
    assert "\n" not in str(error.value)

    index = scann()
    index.build(clustered, np.arange(len(clustered)))
    index.save(tmp_path / "good.scann")
    data = (tmp_path / "good.scann").read_bytes()
    (tmp_path / "cut.scann").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="not a readable scann index"):
        scann().load(tmp_path / "cut.scann")


def test_a_faiss_index_is_refused(clustered: np.ndarray, tmp_path: Path) -> None:
    flat = build_plugin("retrievers", {"name": "faiss-flat"}, DIM)
    flat.build(clustered, np.arange(len(clustered)))
    flat.save(tmp_path / "flat.index")
    with pytest.raises(IndexFileError, match="not a readable scann index"):
        scann().load(tmp_path / "flat.index")


def test_an_index_of_another_dimension_or_metric_is_refused(
    clustered: np.ndarray, tmp_path: Path
) -> None:
    index = scann()
    index.build(clustered[:200], np.arange(200))
    index.save(tmp_path / "ip.scann")
    with pytest.raises(IndexFileError, match="holds 32-dimensional vectors.* 64-dimensional"):
        scann(64).load(tmp_path / "ip.scann")
    with pytest.raises(IndexFileError, match="metric 'ip'.* metric 'l2'"):
        scann(metric="l2").load(tmp_path / "ip.scann")


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_leaves": 0}, "greater than or equal to 1"),
        ({"leaves_to_search": 0}, "greater than or equal to 1"),
        ({"training_sample_size": 5}, "greater than or equal to 16"),
        ({"dimensions_per_block": 0}, "greater than or equal to 1"),
        ({"anisotropic_quantization_threshold": 1.5}, "less than 1"),
        ({"metric": "l2", "anisotropic_quantization_threshold": 0.2}, 'metric "ip" only'),
        ({"num_leaves": 10, "leaves_to_search": 11}, "more than num_leaves = 10"),
        ({"reorder": -1}, "greater than or equal to 0"),
        ({"metric": "cosine"}, "'ip' or 'l2'"),
        ({"num_leafs": 10}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScannOptions(**options)


def test_options_that_cannot_work_are_config_errors(clustered: np.ndarray) -> None:
    with pytest.raises(
        ConfigError, match="num_leaves = 500 needs at least 500 .* there are 300"
    ) as error:
        scann(num_leaves=500).build(clustered[:300], np.arange(300))
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="num_leaves = 100 .* training_sample_size is 50"):
        scann(num_leaves=100, training_sample_size=50).build(clustered, np.arange(3000))
    with pytest.raises(ConfigError, match="needs at least 16 vectors"):
        scann(num_leaves=1).build(clustered[:10], np.arange(10))
    with pytest.raises(ConfigError, match="dimensions_per_block = 40 .* dimension 32"):
        scann(dimensions_per_block=40)


def test_every_option_is_in_the_readme_table() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for option in ScannOptions.model_fields:
        assert f"| `{option}` |" in readme, f"README.md: option {option}"


def test_explicit_tree_options_work_on_a_small_corpus(clustered: np.ndarray) -> None:
    index = scann(num_leaves=4, dimensions_per_block=4, anisotropic_quantization_threshold=0)
    index.build(clustered[:40], np.arange(40))
    _, found = index.search(clustered[:5], 1)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_search_options_are_declared_and_change_nothing_stored(
    random_vectors: np.ndarray, tmp_path: Path
) -> None:
    assert ScannOptions.search_options == {"leaves_to_search", "reorder"}
    assert ScannOptions.runtime_options == {"threads", "query_batch_size"}
    assert not ScannOptions.search_options & ScannOptions.runtime_options
    ids = np.arange(len(random_vectors))
    narrow = scann(num_leaves=50, leaves_to_search=2, reorder=0, threads=1, query_batch_size=3)
    wide = scann(num_leaves=50, leaves_to_search=50, reorder=300)
    narrow.build(random_vectors, ids)
    wide.build(random_vectors, ids)
    narrow.save(tmp_path / "narrow.scann")
    wide.save(tmp_path / "wide.scann")
    assert (tmp_path / "narrow.scann").read_bytes() == (tmp_path / "wide.scann").read_bytes()

    queries = np.random.default_rng(4).standard_normal((100, DIM)).astype(np.float32)
    found = {}
    for name, options in {"narrow": narrow.options, "wide": wide.options}.items():
        loaded = ScannRetriever(options, DIM)
        loaded.load(tmp_path / "narrow.scann")  # built with the narrow settings
        found[name] = recall(loaded.search(queries, 10)[1], random_vectors, queries, ids, 10, "ip")
    assert found["wide"] >= 0.9 > found["narrow"] + 0.2


# --- updating in place -------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"reorder": 0}, {"metric": "l2"}])
def test_added_vectors_are_found_without_training(
    clustered: np.ndarray, tmp_path: Path, options: dict
) -> None:
    ids = far_ids(len(clustered), seed=11)
    index = scann(**options)
    index.build(clustered[:2400], ids[:2400])
    index.add(clustered[2400:], ids[2400:])
    assert index.size == 3000
    assert sorted(index.stored_ids().tolist()) == sorted(ids.tolist())
    exact_reordering = index.options.reorder > 0  # 0: the AH ranking of the top k alone
    _, found = index.search(clustered[2400:], 10)
    finds_itself = (found == ids[2400:, None]).any(axis=1).mean()
    assert finds_itself >= (1.0 if exact_reordering else 0.9)
    queries = queries_near(clustered)
    metric = index.options.metric
    found = index.search(queries, 10)[1]
    assert recall(found, clustered, queries, ids, 10, metric) >= (0.95 if exact_reordering else 0.5)

    index.save(tmp_path / "grown.scann")
    loaded = scann(**options)
    loaded.load(tmp_path / "grown.scann")
    assert_same_answers(loaded, index, queries)


def assert_same_answers(one: ScannRetriever, other: ScannRetriever, queries: np.ndarray) -> None:
    """The same ids; the same scores but for the last bit, which ScaNN's kernels may round
    differently for vectors it was given one by one (``add``) than for a loaded array."""
    one_scores, one_ids = one.search(queries, 10)
    other_scores, other_ids = other.search(queries, 10)
    np.testing.assert_array_equal(one_ids, other_ids)
    np.testing.assert_allclose(one_scores, other_scores, rtol=1e-6)


def test_adding_a_stored_id_changes_nothing(clustered: np.ndarray) -> None:
    index = scann()
    index.build(clustered[:1500], np.arange(1500))
    with pytest.raises(ValueError, match="already stored"):
        index.add(clustered[1500:1502], np.array([7, 5000]))
    with pytest.raises(ValueError, match="not unique"):
        index.add(clustered[1500:1502], np.array([5000, 5000]))
    assert index.size == 1500
    np.testing.assert_array_equal(index.stored_ids(), np.arange(1500))
    with pytest.raises(RuntimeError, match="build\\(\\) or load\\(\\)"):
        scann().add(clustered[:1], np.array([1]))


@pytest.mark.parametrize("n", [3000, 300])  # a tree, brute force
def test_removed_vectors_are_never_returned_and_the_rest_keep_their_ids(
    clustered: np.ndarray, tmp_path: Path, n: int
) -> None:
    base = clustered[:n]
    ids = far_ids(n, seed=13)
    index = scann(leaves_to_search=55) if n >= MIN_TREE_VECTORS else scann()
    index.build(base, ids)
    rng = np.random.default_rng(0)
    gone = rng.choice(n, n // 3, replace=False)
    unknown = np.array([-5, 12345], dtype=np.int64)
    assert index.remove(np.concatenate([ids[gone], unknown, ids[gone[:3]]])) == len(gone)
    assert index.remove(ids[gone[:5]]) == 0
    kept = np.setdiff1d(np.arange(n), gone)
    assert index.size == len(kept)
    assert sorted(index.stored_ids().tolist()) == sorted(ids[kept].tolist())

    scores, found = index.search(base, 10)
    assert not np.isin(found, ids[gone]).any()
    # every kept vector is still found under its own id, with its exact score
    top = found[kept, 0]
    assert (top == ids[kept]).mean() >= 0.99
    queries = queries_near(base)
    got = index.search(queries, 10)[1]
    assert recall(got, base[kept], queries, ids[kept], 10, "ip") >= 0.95

    index.add(base[gone[:10]], ids[gone[:10]])  # back again, under new positions
    assert (index.search(base[gone[:10]], 1)[1][:, 0] == ids[gone[:10]]).all()
    index.save(tmp_path / "shrunk.scann")
    loaded = scann()
    loaded.load(tmp_path / "shrunk.scann")
    assert_same_answers(loaded, index, queries)


def test_everything_can_be_removed(clustered: np.ndarray) -> None:
    index = scann()
    index.build(clustered[:50], np.arange(50))
    assert index.remove(np.arange(50)) == 50
    assert index.size == 0
    _, found = index.search(clustered[:2], 3)
    assert (found == MISSING).all()


# --- discovery ---------------------------------------------------------------------------------


def _installed() -> bool:
    try:
        importlib.metadata.distribution("retro-platform-scann")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(
    not _installed(),
    reason="retro-platform-scann is not installed (pip install ./plugins/retro-platform-scann)",
)
def test_discovered_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, "retro-platform-scann")
    plugins.reset_plugins()
    try:
        registration = plugins.get_registration("retrievers", "scann")
        built = build_plugin("retrievers", {"name": "scann", "num_leaves": 8}, DIM)
    finally:
        plugins.reset_plugins()
    assert registration.factory is ScannRetriever
    assert registration.distribution == "retro-platform-scann"
    assert isinstance(built, ScannRetriever) and built.options.num_leaves == 8


# --- the platform's conformance kit ---------------------------------------------------------


class TestScannContract(RetrieverContract):
    """The whole retriever contract, on a tree with asymmetric hashing (not brute force)."""

    factory = ScannRetriever
    options = {"num_leaves": 8, "leaves_to_search": 4}
    registered_as = "scann"
    n_vectors = 500
    min_recall = 0.9


class TestScannExactContract(RetrieverContract):
    """The contract again on the exact (brute-force) index a small corpus gets."""

    factory = ScannRetriever
    options = {"metric": "l2"}
    n_vectors = 300
