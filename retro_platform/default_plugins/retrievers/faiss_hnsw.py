"""``faiss-hnsw``: a hierarchical navigable small-world graph (Malkov & Yashunin 2016).

Approximate search that needs no training and stays fast at a million vectors, at the price of
memory (the full vectors plus ``2 * M`` neighbour links each) and build time. New vectors are
added to the graph; Faiss's HNSW cannot remove vectors, so ``retro-platform index`` rebuilds the
index (from the stored embeddings, and says so) when documents were removed. ``efSearch`` is a
search-time setting: changing it takes effect on an index built earlier.
"""

from __future__ import annotations

from typing import Any, ClassVar

import faiss
import numpy as np
from pydantic import Field

from retro_platform.default_plugins.retrievers._faiss import FaissOptions, FaissRetriever, check_k
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PluginOptions


class HNSWOptions(FaissOptions):
    """``[retriever] name = "faiss-hnsw"``: graph degree, build and search breadth."""

    # a search-time setting: an index built earlier is searched with the current value
    search_options: ClassVar[frozenset[str]] = frozenset({"efSearch"})

    M: int = Field(32, ge=2, le=256, description="neighbours per node in the graph")
    efConstruction: int = Field(
        80, ge=1, le=4096, description="candidate list length while building the graph"
    )
    efSearch: int = Field(
        128,
        ge=1,
        le=65536,
        description="candidate list length while searching (at least k is used)",
    )


class FaissHNSWRetriever(FaissRetriever):
    """``IndexHNSWFlat`` under an id map of chunk ids."""

    Options: ClassVar[type[PluginOptions]] = HNSWOptions
    plugin_name: ClassVar[str] = "faiss-hnsw"
    inner_types: ClassVar[tuple[type, ...]] = (faiss.IndexHNSWFlat,)

    def factory(self, n: int) -> str:
        return f"HNSW{self.options.M},Flat"

    def prepare(self, inner: Any) -> None:
        inner.hnsw.efConstruction = self.options.efConstruction

    def configure(self, inner: Any) -> None:
        inner.hnsw.efSearch = self.options.efSearch

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # Faiss's graph search pads with -1 when k is well above efSearch, though the vectors
        # are there (measured: 614 hits of k = 2,000 at efSearch 16 over 5,000 vectors), so
        # a search as wide as k is asked for, as the option promises
        inner = faiss.downcast_index(self._require_index().index)
        inner.hnsw.efSearch = max(self.options.efSearch, check_k(k))
        try:
            return super().search(queries, k)
        finally:
            inner.hnsw.efSearch = self.options.efSearch

    def remove_positions(self, inner: Any, positions: np.ndarray) -> None:
        raise NotImplementedError("faiss-hnsw cannot remove vectors")


@hookimpl
def register_retrievers(register):
    register("faiss-hnsw", FaissHNSWRetriever)
