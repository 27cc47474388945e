"""What the built-in Faiss retrievers share: one base class over an ``IndexIDMap2``.

Every built-in index is ``IDMap2`` around the real index (flat, IVF-PQ, HNSW), built with
``faiss.index_factory`` so that Faiss owns every sub-index, and written and read whole with
``faiss.write_index`` / ``faiss.read_index``. The id map stores the chunk ids the core passes,
so a search answers chunk ids directly and :meth:`stored_ids` is a copy of the map.

A subclass says which factory string to build (:meth:`FaissRetriever.factory`), what Faiss
class must sit inside the id map (:attr:`FaissRetriever.inner_types`), and sets its search-time
parameters in :meth:`FaissRetriever.configure`, which also runs after :meth:`load` so that
``nprobe`` / ``efSearch`` / ``k_factor`` take effect on an index built earlier.

A built index grows with :meth:`FaissRetriever.add` (``add_with_ids``: no training, an IVF index
files the vectors under its trained lists) and shrinks with :meth:`FaissRetriever.remove`. Faiss's
own ``IndexIDMap2.remove_ids`` is right only for an inner index that closes the gap the way
``IndexFlat`` does; removal here drops the inner index's positions with
:meth:`FaissRetriever.remove_positions`, which a subclass adapts to its index (an IVF index
renumbers its lists; HNSW cannot remove at all), and then compacts the id map.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import faiss
import numpy as np
from pydantic import Field

from retro_platform.errors import ConfigError, IndexFileError
from retro_platform.progress import progress
from retro_platform.protocols import MISSING, PluginOptions, Retriever

Metric = Literal["ip", "l2"]

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_METRIC_NAMES = {value: key for key, value in _METRICS.items()}

_threads_lock = threading.Lock()
_threads_set = False


def configure_threads() -> None:
    """Let Faiss use every core this process may run on, unless the user set
    ``OMP_NUM_THREADS`` (then OpenMP already follows it). Runs once per process."""
    global _threads_set
    with _threads_lock:
        if _threads_set:
            return
        _threads_set = True
        if os.environ.get("OMP_NUM_THREADS"):
            return
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        faiss.omp_set_num_threads(max(1, cores))


#: Training sets smaller than this many floats train on one thread: their k-means steps are
#: too short for threads to pay off, and on cores shared with other jobs each step's barrier
#: waits for a descheduled thread (measured: 13 s against under 1 s for 1,800 vectors).
SMALL_TRAINING_FLOATS = 8_000_000


def _threads_for(floats: int) -> contextlib.AbstractContextManager[None]:
    """One OpenMP thread while training on fewer than :data:`SMALL_TRAINING_FLOATS` floats."""
    return one_thread(floats < SMALL_TRAINING_FLOATS)


@contextlib.contextmanager
def one_thread(when: bool = True) -> Iterator[None]:
    """Faiss on one OpenMP thread inside (if ``when``), for work too short for threads to pay."""
    if not when:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class FaissOptions(PluginOptions):
    """Options every built-in Faiss retriever has."""

    metric: Metric = Field(
        "ip",
        description='"ip": inner product (cosine on unit vectors); "l2": squared Euclidean',
    )


class FaissRetriever(Retriever):
    """Base of the built-in Faiss retrievers (see the module docstring)."""

    Options: ClassVar[type[PluginOptions]] = FaissOptions

    #: The plugin's registered name, for messages.
    plugin_name: ClassVar[str] = "faiss"
    #: The Faiss classes that may sit inside the id map of this retriever's files.
    inner_types: ClassVar[tuple[type, ...]] = ()

    def __init__(self, options: Any, dimension: int) -> None:
        if not isinstance(dimension, int | np.integer) or dimension < 1:
            raise ConfigError(
                f"{self.plugin_name} needs a positive vector dimension, got {dimension!r}"
            )
        super().__init__(options, int(dimension))
        self._index: Any = None  # faiss.IndexIDMap2 once built or loaded
        configure_threads()

    # --- what a subclass provides --------------------------------------------------------------

    def factory(self, n: int) -> str:
        """The ``faiss.index_factory`` string of the index inside the id map, for ``n`` vectors
        (raises ``ConfigError`` when the options cannot work with ``n``)."""
        raise NotImplementedError

    def training_sample(self, vectors: np.ndarray) -> np.ndarray | None:
        """The vectors to train on (None: the index needs no training)."""
        return None

    def prepare(self, inner: Any) -> None:
        """Set build-time parameters on the fresh inner index (before training and adding)."""

    def configure(self, inner: Any) -> None:
        """Set search-time parameters on the inner index (after build and after load)."""

    def remove_positions(self, inner: Any, positions: np.ndarray) -> None:
        """Remove the vectors at ``positions`` (sorted int64 offsets into the inner index, the
        order they were added in) so that the later ones move down to close the gaps, as
        ``IndexFlat.remove_ids`` does; raise ``NotImplementedError`` before changing anything
        where the inner index cannot remove."""
        removed = inner.remove_ids(position_selector(positions))
        if removed != len(positions):
            raise RuntimeError(f"removed {removed} of {len(positions)} vectors")

    # --- the protocol ------------------------------------------------------------------------

    @property
    def metric(self) -> str:
        return self.options.metric

    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = self._as_matrix(vectors, "vectors")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (len(vectors),):
            raise ValueError(f"expected {len(vectors)} ids, got an array of shape {ids.shape}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("the ids given to build() are not unique")
        index = faiss.index_factory(
            self.dimension, f"IDMap2,{self.factory(len(vectors))}", _METRICS[self.metric]
        )
        inner = faiss.downcast_index(index.index)
        self.prepare(inner)
        sample = self.training_sample(vectors)
        if sample is not None:
            with _threads_for(len(sample) * self.dimension):
                index.train(sample)
        _add(index, vectors, ids)
        self.configure(inner)
        self._index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._require_index()
        return search_index(index, self._as_matrix(queries, "queries"), k, self.metric)

    def save(self, path: Path) -> None:
        faiss.write_index(self._require_index(), str(path))

    def load(self, path: Path) -> None:
        path = Path(path)
        index = read_index_file(path)
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
        if inner is None or not isinstance(inner, self.inner_types):
            found = type(inner if inner is not None else index).__name__
            raise IndexFileError(
                f"index file {path} holds a Faiss {found} index, not a {self.plugin_name} index"
            )
        check_vectors(index, f"index file {path}", self.dimension, self.metric)
        self.configure(inner)
        self._index = index

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        index = self._require_index()
        vectors = self._as_matrix(vectors, "vectors")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (len(vectors),):
            raise ValueError(f"expected {len(vectors)} ids, got an array of shape {ids.shape}")
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self.stored_ids()).any():
            raise ValueError("the ids given to add() are not new and unique")
        _add(index, vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        index = self._require_index()
        id_map = self.stored_ids()
        drop = np.isin(id_map, np.asarray(ids, dtype=np.int64))
        positions = np.flatnonzero(drop).astype(np.int64)
        if not len(positions):
            return 0
        inner = faiss.downcast_index(index.index)
        self.remove_positions(inner, positions)
        kept = np.ascontiguousarray(id_map[~drop])
        if inner.ntotal != len(kept):
            raise RuntimeError(f"the inner index holds {inner.ntotal} vectors, not {len(kept)}")
        faiss.copy_array_to_vector(kept, index.id_map)
        index.ntotal = len(kept)
        index.construct_rev_map()
        return len(positions)

    @property
    def size(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def stored_ids(self) -> np.ndarray:
        if self._index is None:
            return np.zeros(0, dtype=np.int64)
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    # --- helpers -----------------------------------------------------------------------------

    @property
    def index(self) -> Any:
        """The Faiss index (an ``IndexIDMap2``), for benchmarks and power users."""
        return self._require_index()

    def _require_index(self) -> Any:
        if self._index is None:
            raise RuntimeError(
                f"the {self.plugin_name} index is empty: call build() or load() first"
            )
        return self._index

    def _as_matrix(self, array: np.ndarray, what: str) -> np.ndarray:
        return as_matrix(array, self.dimension, what)


def as_matrix(array: Any, dimension: int, what: str) -> np.ndarray:
    """``array`` as C-contiguous float32 ``(n, dimension)``, copied only when it must be."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dimension:
        raise ValueError(f"{what} must have shape (n, {dimension}), got {tuple(array.shape)}")
    return array


def search_index(
    index: Any, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` as the Retriever protocol answers: higher scores nearer (l2 distances
    negated), ``-inf`` beside a missing (-1) id; ``k`` checked first."""
    scores, ids = index.search(queries, check_k(k))
    return protocol_scores(scores, ids, metric)


def read_index_file(path: Path, flags: int = 0) -> Any:
    """``faiss.read_index`` of ``path`` with Faiss's IO ``flags``; ``IndexFileError`` (one line,
    Faiss's reason shortened) when the file is missing or not a readable Faiss index."""
    if not path.is_file():
        raise IndexFileError(f"index file {path} does not exist")
    try:
        return faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError, OSError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        if len(reason) > 160:
            reason = reason[:157] + "..."
        raise IndexFileError(
            f"index file {path} is not a readable Faiss index ({reason})"
        ) from None


def check_k(k: Any) -> int:
    """``k`` as an int (``ValueError`` unless a positive integer)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def protocol_scores(
    scores: np.ndarray, ids: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Faiss's answer as the protocol's, in place: l2 distances negated (higher is nearer) and
    ``-inf`` beside a missing (-1) id."""
    if metric == "l2":
        np.negative(scores, out=scores)
    missing = ids == MISSING
    if missing.any():
        scores[missing] = -np.inf
    return scores, ids


def sample_rows(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most ``size`` rows of ``vectors``, chosen without replacement by ``seed`` (in their
    original order, so that the same data and seed always give the same sample)."""
    if len(vectors) <= size:
        return vectors
    rows = np.random.default_rng(seed).choice(len(vectors), size=size, replace=False)
    rows.sort()
    return vectors[rows]


#: k-means wants at least this many training vectors per centroid (Faiss warns below it).
MIN_POINTS_PER_LIST = 39


def list_count(plugin: str, n: int, nlist: int | str, train_size: int) -> int:
    """The number of IVF lists for ``n`` vectors: ``nlist``, or for ``"auto"`` about
    ``4 * sqrt(n)``; ``ConfigError`` (naming ``plugin``) when too few vectors train them."""
    trainable = min(n, train_size)
    if nlist == "auto":
        return max(1, min(round(4 * math.sqrt(n)), trainable // MIN_POINTS_PER_LIST))
    assert isinstance(nlist, int)
    needed = nlist * MIN_POINTS_PER_LIST
    if needed > trainable:
        what = f"train_size is {train_size:,}" if train_size < n else f"there are {n:,}"
        raise ConfigError(
            f"{plugin} option nlist = {nlist} needs at least {needed:,} vectors to train "
            f'({MIN_POINTS_PER_LIST} per list) but {what}: lower nlist or use nlist = "auto"'
        )
    return nlist


#: Vectors per Faiss ``add`` call: a graph index (HNSW) takes minutes to add a large database,
#: and between calls a progress line can be printed (the vectors go in in the same order).
ADD_BATCH = 65_536


def _add(index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
    """``index.add_with_ids``, in batches with a progress bar when there are many vectors."""
    if len(vectors) <= ADD_BATCH:
        if len(vectors):
            index.add_with_ids(vectors, ids)
        return
    with progress(total=len(vectors), desc="index add", unit="vector") as bar:
        for start in range(0, len(vectors), ADD_BATCH):
            stop = start + ADD_BATCH
            index.add_with_ids(vectors[start:stop], ids[start:stop])
            bar.update(len(vectors[start:stop]))


def check_vectors(index: Any, what: str, dimension: int, metric: str) -> None:
    """Refuse a loaded Faiss ``index`` (``what``: how errors name it) whose vectors are not
    ``dimension``-dimensional or were compared by another ``metric``."""
    if index.d != dimension:
        raise IndexFileError(
            f"{what} holds {index.d}-dimensional vectors, "
            f"but the embedder makes {dimension}-dimensional ones"
        )
    found = _METRIC_NAMES.get(index.metric_type, str(index.metric_type))
    if found != metric:
        raise IndexFileError(
            f"{what} was built with metric {found!r}, "
            f"but the retriever is configured with metric {metric!r}"
        )


def position_selector(positions: np.ndarray) -> Any:
    """A Faiss selector of ``positions`` for ``remove_ids``, which asks it about every stored
    vector: a hash set (``IDSelectorBatch``). ``IDSelectorArray`` scans its array for each, so
    removing m of n vectors took n * m steps (measured: 20,000 of 500,000 flat vectors, 4.7 s
    against 0.005 s)."""
    return faiss.IDSelectorBatch(np.ascontiguousarray(positions, dtype=np.int64))
