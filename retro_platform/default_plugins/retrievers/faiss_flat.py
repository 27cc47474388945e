"""``faiss-flat``: exact nearest-neighbour search, every stored vector compared with every query.

The reference the approximate retrievers are measured against, and the right choice up to a few
hundred thousand chunks: on 2 cores it answers about 3,700 queries/s over 34k MiniLM vectors
(1,000 queries at a time) and needs no training.
"""

from __future__ import annotations

from typing import ClassVar

import faiss

from retro_platform.default_plugins.retrievers._faiss import FaissOptions, FaissRetriever
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PluginOptions


class FlatOptions(FaissOptions):
    """``[retriever] name = "faiss-flat"``: only ``metric``."""


class FaissFlatRetriever(FaissRetriever):
    """Exact search (``IndexFlatIP`` / ``IndexFlatL2``) under an id map of chunk ids."""

    Options: ClassVar[type[PluginOptions]] = FlatOptions
    plugin_name: ClassVar[str] = "faiss-flat"
    inner_types: ClassVar[tuple[type, ...]] = (faiss.IndexFlat,)

    def factory(self, n: int) -> str:
        return "Flat"


@hookimpl
def register_retrievers(register):
    register("faiss-flat", FaissFlatRetriever)
