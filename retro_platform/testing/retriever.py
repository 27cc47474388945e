"""The retriever contract: what every :class:`~retro_platform.protocols.Retriever` promises.

Subclass it in the plugin's tests::

    class TestMyRetriever(RetrieverContract):
        factory = MyRetriever
        options = {"metric": "l2"}
        registered_as = "my-retriever"
        min_recall = 0.9  # an approximate index; 1.0 (the default) for exact search
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from retro_platform.errors import IndexFileError
from retro_platform.protocols.retriever import MISSING, Retriever
from retro_platform.testing._common import OptionsContract


def far_ids(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct, large, unordered int64 ids: chunk primary keys need not be 0..n-1."""
    rng = np.random.default_rng(seed)
    return rng.choice(2**50, size=n, replace=False).astype(np.int64) + 2**40


def clustered_vectors(n: int, dimension: int, seed: int = 0) -> np.ndarray:
    """``n`` unit float32 vectors in a few clusters, like real embeddings (not uniform noise,
    on which approximate indexes look worse than they are)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, n // 50), dimension))
    points = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, dimension))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def exact_scores(base: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """``(q, n)`` scores, higher is nearer: inner product, or minus the squared L2 distance."""
    if metric == "ip":
        return queries @ base.T
    return -((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1)


class RetrieverContract(OptionsContract):
    """The retriever rules as pytest tests; set :attr:`factory` and the knobs below."""

    family = "retrievers"
    #: Width of the test vectors.
    dimension: ClassVar[int] = 16
    #: How many vectors the test index holds (an IVF index needs enough to train on).
    n_vectors: ClassVar[int] = 500
    #: Neighbours asked for.
    k: ClassVar[int] = 5
    #: Recall@k against exact search that the plugin declares (1.0: exact search).
    min_recall: ClassVar[float] = 1.0
    #: ``"ip"`` or ``"l2"``: what "nearer" means; default: the options' ``metric``, else ``"ip"``.
    metric: ClassVar[str | None] = None

    # --- helpers a subclass may override -------------------------------------------------------

    def make_retriever(self, tmp_path: Path) -> Retriever:
        """A fresh, empty retriever, built as the core builds it."""
        return self.factory(self.make_options(tmp_path), self.dimension)

    def make_vectors(self, n: int, seed: int = 0) -> np.ndarray:
        return clustered_vectors(n, self.dimension, seed)

    def scoring(self, tmp_path: Path) -> str:
        if self.metric is not None:
            return self.metric
        return str(getattr(self.make_options(tmp_path), "metric", "ip"))

    @pytest.fixture
    def built(self, tmp_path: Path) -> tuple[Retriever, np.ndarray, np.ndarray]:
        """``(retriever, vectors, ids)``: an index built over :attr:`n_vectors` vectors."""
        vectors, ids = self.make_vectors(self.n_vectors), far_ids(self.n_vectors)
        retriever = self.make_retriever(tmp_path)
        retriever.build(vectors, ids)
        return retriever, vectors, ids

    # --- search ----------------------------------------------------------------------------

    def test_search_shapes_and_dtypes(self, built) -> None:
        """Rule: search returns ``(scores, ids)``, both ``(q, k)``, float32 and int64."""
        retriever, vectors, _ = built
        scores, ids = retriever.search(vectors[:7], self.k)
        assert isinstance(scores, np.ndarray) and isinstance(ids, np.ndarray), (
            "rule: search returns numpy arrays"
        )
        assert scores.shape == ids.shape == (7, self.k), (
            f"rule: search returns (q, k) arrays; got {scores.shape} and {ids.shape}"
        )
        assert scores.dtype == np.float32, f"rule: scores are float32, got {scores.dtype}"
        assert ids.dtype == np.int64, f"rule: ids are int64, got {ids.dtype}"

    def test_search_returns_only_stored_ids(self, built) -> None:
        """Rule: every id a search returns was stored, or is ``MISSING`` (-1)."""
        retriever, vectors, ids = built
        _, found = retriever.search(self.make_vectors(40, seed=1), self.k)
        strangers = set(found[(found != MISSING) & ~np.isin(found, ids)].tolist())
        assert not strangers, (
            f"rule: search returns only ids that were stored (or -1); got {sorted(strangers)[:5]}"
        )
        for row in found:
            real = row[row != MISSING]
            assert len(set(real.tolist())) == len(real), (
                "rule: search returns only ids that were stored, each at most once per row"
            )

    def test_ids_round_trip(self, built) -> None:
        """Rule: ids are kept as given (large, non-contiguous int64): a stored vector's
        nearest neighbour is its own id."""
        retriever, vectors, ids = built
        _, found = retriever.search(vectors[:100], 1)
        hits = float((found[:, 0] == ids[:100]).mean())
        assert hits >= self.min_recall, (
            f"rule: ids round-trip (a stored vector finds its own id); only {hits:.0%} did"
        )

    def test_rows_are_sorted_best_first(self, built) -> None:
        """Rule: each row is sorted best first: scores never increase along a row, and a
        higher score is nearer."""
        retriever, vectors, _ = built
        scores, _ = retriever.search(self.make_vectors(40, seed=2), self.k)
        assert (np.diff(scores, axis=1) <= 1e-6).all(), (
            "rule: each row is sorted best first (scores non-increasing, higher is nearer)"
        )

    def test_k_beyond_the_index_pads(self, built) -> None:
        """Rule: where fewer than k are found, the row ends in ``MISSING`` ids with score -inf."""
        retriever, vectors, _ = built
        k = self.n_vectors + 3
        scores, found = retriever.search(vectors[:3], k)
        assert found.shape == scores.shape == (3, k), "rule: search returns (q, k) arrays"
        missing = found == MISSING
        assert missing[:, self.n_vectors :].all(), (
            "rule: k larger than the index pads each row with -1"
        )
        assert np.isneginf(scores[missing]).all(), "rule: a padded (-1) result has score -inf"
        assert not (missing[:, :-1] & ~missing[:, 1:]).any(), (
            "rule: padding (-1) comes after every result found"
        )

    def test_an_empty_query_batch(self, built) -> None:
        """Rule: a ``(0, dimension)`` query batch gives ``(0, k)`` scores and ids."""
        retriever, _, _ = built
        scores, found = retriever.search(np.zeros((0, self.dimension), np.float32), self.k)
        assert scores.shape == found.shape == (0, self.k), (
            f"rule: an empty query batch gives (0, k) arrays; got {scores.shape}, {found.shape}"
        )
        assert scores.dtype == np.float32 and found.dtype == np.int64, (
            "rule: scores are float32 and ids int64, for an empty batch too"
        )

    def test_duplicate_queries_give_identical_rows(self, built) -> None:
        """Rule: the same query gives the same row, wherever it sits in the batch."""
        retriever, vectors, _ = built
        queries = np.concatenate([vectors[:1], vectors[10:13], vectors[:1], vectors[:1]])
        scores, found = retriever.search(queries, self.k)
        for row in (4, 5):
            assert np.array_equal(found[row], found[0]), (
                "rule: duplicate queries give identical rows"
            )
            np.testing.assert_allclose(scores[row], scores[0], rtol=1e-5, atol=1e-6)

    def test_recall_against_exact_search(self, built, tmp_path: Path) -> None:
        """Rule: recall@k against exact numpy search is at least :attr:`min_recall`
        (a result counts when it is as near as the true k-th neighbour: ties are fine)."""
        retriever, vectors, ids = built
        queries = self.make_vectors(50, seed=3)
        _, found = retriever.search(queries, self.k)
        recall = _recall(found, vectors, queries, ids, self.k, self.scoring(tmp_path))
        assert recall >= self.min_recall, (
            f"rule: recall@{self.k} against exact search is at least {self.min_recall}; "
            f"got {recall:.3f}"
        )

    # --- what is stored --------------------------------------------------------------------

    def test_size_and_stored_ids(self, built) -> None:
        """Rule: ``size`` counts the stored vectors; ``stored_ids`` is every stored id,
        ``(size,)`` int64, in any order."""
        retriever, _, ids = built
        assert retriever.size == len(ids), f"rule: size is {len(ids)}, got {retriever.size}"
        stored = retriever.stored_ids()
        assert isinstance(stored, np.ndarray) and stored.dtype == np.int64, (
            "rule: stored_ids is an int64 array"
        )
        assert stored.shape == (len(ids),), "rule: stored_ids has shape (size,)"
        assert np.array_equal(np.sort(stored), np.sort(ids)), (
            "rule: stored_ids holds exactly the stored ids"
        )

    def test_save_then_load_answers_identically(self, built, tmp_path: Path) -> None:
        """Rule: a fresh instance that loads what :meth:`save` wrote answers identically."""
        retriever, vectors, ids = built
        path = tmp_path / f"saved{self.factory.file_suffix}"
        retriever.save(path)
        loaded = self.make_retriever(tmp_path)
        loaded.load(path)
        assert loaded.size == retriever.size, "rule: a loaded index has the saved size"
        assert np.array_equal(np.sort(loaded.stored_ids()), np.sort(ids)), (
            "rule: a loaded index has the saved ids"
        )
        queries = vectors[:20]
        (before_scores, before), (after_scores, after) = (
            retriever.search(queries, self.k),
            loaded.search(queries, self.k),
        )
        assert np.array_equal(before, after), "rule: save then load answers identically"
        np.testing.assert_allclose(after_scores, before_scores, rtol=1e-5, atol=1e-6)

    def test_loading_a_missing_file_is_an_index_file_error(self, tmp_path: Path) -> None:
        """Rule: :meth:`load` of a missing file raises ``IndexFileError``."""
        with pytest.raises(IndexFileError):
            self.make_retriever(tmp_path).load(tmp_path / f"missing{self.factory.file_suffix}")

    def test_loading_garbage_is_an_index_file_error(self, tmp_path: Path) -> None:
        """Rule: :meth:`load` of a file that is not an index raises ``IndexFileError``."""
        garbage = tmp_path / f"garbage{self.factory.file_suffix}"
        garbage.write_bytes(b"this is not an index file at all\x00\xff" * 20)
        try:
            self.make_retriever(tmp_path).load(garbage)
        except IndexFileError:
            return
        except Exception as error:
            pytest.fail(
                "rule: loading a file that is not an index raises IndexFileError; "
                f"got {type(error).__name__}: {error}"
            )
        pytest.fail("rule: loading a file that is not an index raises IndexFileError")

    # --- optional: add and remove ----------------------------------------------------------

    def test_add_finds_new_ids_or_changes_nothing(self, built) -> None:
        """Rule: ids :meth:`add` stores become findable and ``size`` grows; an index that
        cannot grow raises ``NotImplementedError`` and is left as it was."""
        retriever, vectors, ids = built
        new_vectors, new_ids = self.make_vectors(30, seed=4), far_ids(30, seed=5) + 2**52
        before = _snapshot(retriever, vectors[:20], self.k)
        try:
            retriever.add(new_vectors, new_ids)
        except NotImplementedError:
            assert _snapshot(retriever, vectors[:20], self.k) == before, (
                "rule: add raising NotImplementedError changes nothing"
            )
            return
        assert retriever.size == len(ids) + len(new_ids), "rule: add grows size by the new ids"
        assert set(retriever.stored_ids().tolist()) == set(ids.tolist()) | set(new_ids.tolist()), (
            "rule: after add, stored_ids holds the old and the new ids"
        )
        _, found = retriever.search(new_vectors, self.k)
        hits = float((found == new_ids[:, None]).any(axis=1).mean())
        assert hits >= self.min_recall, (
            f"rule: added ids become findable; only {hits:.0%} of the added vectors found "
            "themselves"
        )

    def test_remove_hides_ids_or_changes_nothing(self, built) -> None:
        """Rule: ids :meth:`remove` removed are never returned, it counts them (ignoring ids
        not stored) and ``size`` shrinks; an index that cannot remove raises
        ``NotImplementedError`` and is left as it was."""
        retriever, vectors, ids = built
        gone = ids[::5]
        before = _snapshot(retriever, vectors[:20], self.k)
        try:
            removed = retriever.remove(np.concatenate([gone, [7]]))  # 7 was never stored
        except NotImplementedError:
            assert _snapshot(retriever, vectors[:20], self.k) == before, (
                "rule: remove raising NotImplementedError changes nothing"
            )
            return
        assert removed == len(gone), (
            f"rule: remove returns how many stored ids it removed ({len(gone)}), got {removed}"
        )
        assert retriever.size == len(ids) - len(gone), "rule: remove shrinks size"
        assert not np.isin(retriever.stored_ids(), gone).any(), "rule: removed ids leave stored_ids"
        _, found = retriever.search(vectors, self.k)
        assert not np.isin(found, gone).any(), "rule: removed ids are never returned"

    def test_a_loaded_index_takes_large_updates(self, built, tmp_path: Path) -> None:
        """Rule: what the core updates is a loaded index (the previous version's, read from its
        file); it can lose four in five of its vectors and then take more than it kept, and it
        holds exactly the ids it should, finds them, and saves and loads them. (Whichever of
        :meth:`remove` and :meth:`add` raises ``NotImplementedError`` is left out.)"""
        retriever, vectors, ids = built
        first = tmp_path / f"first{self.factory.file_suffix}"
        retriever.save(first)
        loaded = self.make_retriever(tmp_path)
        loaded.load(first)
        kept = np.arange(len(ids)) % 5 == 0
        try:
            loaded.remove(ids[~kept])
        except NotImplementedError:
            kept[:] = True
        base, base_ids = vectors[kept], ids[kept]
        new_vectors, new_ids = self.make_vectors(len(ids), seed=8), far_ids(len(ids), 9) + 2**52
        try:
            loaded.add(new_vectors, new_ids)
        except NotImplementedError:
            pass
        else:
            base, base_ids = (
                np.concatenate([base, new_vectors]),
                np.concatenate([base_ids, new_ids]),
            )
        assert np.array_equal(np.sort(loaded.stored_ids()), np.sort(base_ids)), (
            "rule: after removing from and adding to a loaded index, stored_ids holds exactly "
            "the ids kept and added"
        )
        _, found = loaded.search(base, self.k)
        assert np.isin(found[found != MISSING], base_ids).all(), (
            "rule: an updated index returns only the ids it holds"
        )
        hits = float((found == base_ids[:, None]).any(axis=1).mean())
        assert hits >= self.min_recall, (
            f"rule: an updated index finds what it holds; only {hits:.0%} of its vectors "
            "found themselves"
        )
        second = tmp_path / f"second{self.factory.file_suffix}"
        loaded.save(second)
        again = self.make_retriever(tmp_path)
        again.load(second)
        assert _snapshot(again, base[:50], self.k) == _snapshot(loaded, base[:50], self.k), (
            "rule: an updated index, saved and loaded, answers identically"
        )


def _snapshot(retriever: Retriever, queries: np.ndarray, k: int) -> tuple[Any, ...]:
    """What an unchanged index must still answer: size, stored ids and a search."""
    _, found = retriever.search(queries, k)
    return retriever.size, tuple(np.sort(retriever.stored_ids()).tolist()), found.tobytes()


def _recall(
    found: np.ndarray,
    base: np.ndarray,
    queries: np.ndarray,
    ids: np.ndarray,
    k: int,
    metric: str,
) -> float:
    """Tie-aware recall@k: a result counts if it is as near as the true k-th neighbour."""
    everything = exact_scores(base, queries, metric)
    kth = np.sort(everything, axis=1)[:, -k][:, None]
    row_of = {int(chunk): row for row, chunk in enumerate(ids)}
    rows = np.array([[row_of.get(int(i), -1) for i in line] for line in found])
    scores = np.where(rows >= 0, np.take_along_axis(everything, np.maximum(rows, 0), 1), -np.inf)
    return float((scores >= kth - 1e-5).mean())
