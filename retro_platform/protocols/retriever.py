"""The retriever protocol: a vector index over chunk embeddings, searched by vector.

The ids a retriever stores are the chunks' primary keys in SQL, so a search result is a chunk
id with no mapping table in between, and ``store check`` can compare the two sides.

Two methods are optional: :meth:`Retriever.add` and :meth:`Retriever.remove` let ``retro-platform
index`` bring a finished index up to date after documents were added or removed, without
training it again. A retriever that cannot do one of them keeps the default, which raises
``NotImplementedError``; the core then rebuilds the index from the stored embeddings and says so.

A retriever that builds in bounded memory sets :attr:`Retriever.reads_in_blocks`: its
:meth:`Retriever.build` and :meth:`Retriever.add` are then given :class:`VectorRows` (the
embedding file's rows, read only when sliced) instead of one array of every vector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from retro_platform.protocols.options import PluginOptions

#: The id a search returns where it found fewer than k results.
MISSING = -1


class VectorRows:
    """Rows ``rows`` of a (memory-mapped) ``(count, dimension)`` float32 array, read only when
    indexed: ``vectors[start:stop]`` or ``vectors[index_array]`` is an array of just those rows.

    What :meth:`Retriever.build` and :meth:`Retriever.add` are given when the retriever
    :attr:`~Retriever.reads_in_blocks`, so that an index over more vectors than fit in memory
    can be built, and grown, block by block."""

    def __init__(self, array: np.ndarray, rows: np.ndarray) -> None:
        self.array = array
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.array[self.rows[index]])


class Retriever(ABC):
    """Base class of retrievers, registered with ``register_retrievers``.

    Built as ``Retriever(options, dimension)``, then either :meth:`build` or :meth:`load`.
    A subclass declares its options model as ``Options`` (a
    :class:`~retro_platform.protocols.PluginOptions` subclass) and its file's extension as
    ``file_suffix``; user errors are :class:`retro_platform.errors.ConfigError` (options that
    cannot work) and :class:`retro_platform.errors.IndexFileError` (a file that cannot be read).
    """

    Options: ClassVar[type[PluginOptions]] = PluginOptions

    #: The file name extension of :meth:`save`'s file (or folder, for an index of several files).
    file_suffix: ClassVar[str] = ".index"

    #: True: :meth:`build` and :meth:`add` read their vectors in slices and are given
    #: :class:`VectorRows` rather than an array, so the core never holds every vector in memory.
    reads_in_blocks: ClassVar[bool] = False

    def __init__(self, options: PluginOptions, dimension: int) -> None:
        self.options = options
        self.dimension = dimension

    @abstractmethod
    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Index ``vectors`` ``(n, dimension)`` float32 under ``ids`` ``(n,)`` int64 (training
        first where the index needs it; :class:`VectorRows` if :attr:`reads_in_blocks`). Raises ``ConfigError`` when the options cannot work
        with ``n`` vectors (e.g. more IVF lists than vectors)."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored vectors of each query ``(q, dimension)`` float32.

        Returns ``(scores, ids)``, both ``(q, k)``: float32 scores, higher is nearer (inner
        product, or minus the squared L2 distance), each row best first; int64 ids, each stored
        id at most once per row. Where fewer than ``k`` were found (``k`` may exceed
        :attr:`size`) a row ends in :data:`MISSING` ids with score ``-inf``. An empty batch
        ``(0, dimension)`` gives ``(0, k)`` arrays.
        """

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the index to ``path`` (the core renames it into place afterwards). An index of
        several files makes ``path`` a folder of them (the core gives an empty file there)."""

    @abstractmethod
    def load(self, path: Path) -> None:
        """Read an index :meth:`save` wrote. Raises ``IndexFileError`` if ``path`` is missing,
        unreadable, of another kind or dimension."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Number of stored vectors."""

    @abstractmethod
    def stored_ids(self) -> np.ndarray:
        """Every stored id, ``(size,)`` int64 in any order (for ``store check``)."""

    # --- optional: updating a finished index in place -----------------------------------------

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``vectors`` ``(n, dimension)`` float32 under new ``ids`` ``(n,)`` int64 to a built
        or loaded index, with no training: an index that was trained (IVF lists, PQ codebooks)
        keeps what it learned and files the new vectors under it (:class:`VectorRows` if
        :attr:`reads_in_blocks`).

        The ids are never already stored. Raises ``NotImplementedError`` (before changing
        anything) where the index cannot grow; the core then rebuilds it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot add vectors to a built index")

    def remove(self, ids: np.ndarray) -> int:
        """Remove the vectors stored under ``ids`` ``(n,)`` int64 (ids not stored are ignored);
        return how many were removed. Afterwards no search returns a removed id.

        Raises ``NotImplementedError`` (before changing anything) where the index cannot
        remove vectors, e.g. a graph index; the core then rebuilds it without them.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot remove vectors from an index")
