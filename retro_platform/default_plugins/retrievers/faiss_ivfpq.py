"""``faiss-ivfpq``: an inverted file of product-quantized codes, re-ranked with exact vectors.

The vectors are clustered into ``nlist`` lists (k-means); a query scans the ``nprobe`` lists
whose centroids are nearest, comparing it with compact PQ codes (``m`` bytes per vector at
8 bits). PQ distances alone are too coarse for MiniLM vectors: recall@10 against exact search
saturates near 0.6 however many lists are probed. So by default (``refine = true``) the best
``k * k_factor`` candidates are re-ranked with the stored full vectors (Faiss
``IndexRefineFlat``), which brings recall@2 and recall@10 above 0.9.

``nprobe`` and ``k_factor`` are search-time settings: changing them takes effect on an index
built earlier.

Vectors added to a built index are filed under its trained lists and codebooks (no training);
removed ones leave their lists (and the refine stage's exact vectors) with no rebuild.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import faiss
import numpy as np
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from retro_platform.default_plugins.retrievers._faiss import (
    FaissOptions,
    FaissRetriever,
    list_count,
    position_selector,
    sample_rows,
)
from retro_platform.errors import ConfigError
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PluginOptions


class IVFPQOptions(FaissOptions):
    """``[retriever] name = "faiss-ivfpq"``."""

    # search-time settings: an index built earlier is searched with the current values
    search_options: ClassVar[frozenset[str]] = frozenset({"nprobe", "k_factor"})

    nlist: int | Literal["auto"] = Field(
        "auto",
        description='inverted lists; "auto": about 4 * sqrt(n), at least 39 training vectors each',
    )
    m: int | Literal["auto"] = Field(
        "auto",
        description="PQ sub-quantizers (bytes per code at nbits = 8), must divide the dimension; "
        '"auto": dimension / 8, or the nearest divisor below it',
    )
    nbits: int = Field(8, ge=1, le=16, description="bits per sub-quantizer code")
    nprobe: int = Field(32, ge=1, description="lists scanned per query")
    train_size: int = Field(
        262_144, ge=1, description="most vectors sampled (with `seed`) to train the lists and codes"
    )
    seed: int = Field(0, description="seed of the training sample")
    refine: bool = Field(True, description="re-rank candidates with the exact vectors")
    k_factor: float = Field(
        16.0, ge=1.0, description="with refine: re-rank the best k * k_factor PQ candidates"
    )

    @field_validator("nlist", "m", mode="before")
    @classmethod
    def _positive_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise PydanticCustomError("positive_or_auto", 'must be "auto" or a positive whole number')


class FaissIVFPQRetriever(FaissRetriever):
    """``IndexIVFPQ`` (optionally inside ``IndexRefineFlat``) under an id map of chunk ids."""

    Options: ClassVar[type[PluginOptions]] = IVFPQOptions
    plugin_name: ClassVar[str] = "faiss-ivfpq"
    inner_types: ClassVar[tuple[type, ...]] = (faiss.IndexIVFPQ, faiss.IndexRefineFlat)

    def __init__(self, options: Any, dimension: int) -> None:
        super().__init__(options, dimension)
        self.m = self._choose_m()

    def _choose_m(self) -> int:
        d = self.dimension
        m = self.options.m
        if m == "auto":
            return max(divisor for divisor in range(1, max(1, d // 8) + 1) if d % divisor == 0)
        if d % m:
            divisors = [str(x) for x in range(1, d + 1) if d % x == 0 and x <= 128]
            raise ConfigError(
                f"faiss-ivfpq option m = {m} does not divide the embedding dimension {d}: "
                f'use one of {", ".join(divisors)} or "auto"'
            )
        return m

    def nlist_for(self, n: int) -> int:
        """The number of lists for ``n`` vectors (``ConfigError`` when too few to train them)."""
        return list_count(self.plugin_name, n, self.options.nlist, self.options.train_size)

    def factory(self, n: int) -> str:
        trainable = min(n, self.options.train_size)
        codes = 2**self.options.nbits
        if trainable < codes:
            raise ConfigError(
                f"faiss-ivfpq with nbits = {self.options.nbits} needs at least {codes:,} vectors "
                f"to train, got {trainable:,}: lower nbits, or use faiss-flat for so few chunks"
            )
        refine = ",RFlat" if self.options.refine else ""
        return f"IVF{self.nlist_for(n)},PQ{self.m}x{self.options.nbits}np{refine}"

    def training_sample(self, vectors: np.ndarray) -> np.ndarray:
        return sample_rows(vectors, self.options.train_size, self.options.seed)

    def prepare(self, inner: Any) -> None:
        ivf = self._ivf(inner)
        # Our nlist rule already asks for enough points per list; PQ codebooks on small
        # corpora get fewer than Faiss's advice, which refine makes up for: no stderr noise.
        ivf.cp.min_points_per_centroid = 1
        ivf.pq.cp.min_points_per_centroid = 1

    def configure(self, inner: Any) -> None:
        self._ivf(inner).nprobe = self.options.nprobe
        if isinstance(inner, faiss.IndexRefine):
            inner.k_factor = float(self.options.k_factor)

    def remove_positions(self, inner: Any, positions: np.ndarray) -> None:
        # The lists store each vector's position in the order of adding; a removal leaves the
        # later positions as they were, so they are moved down here to match the id map (and
        # the refine stage's flat index, which closes its gaps itself).
        ivf = self._ivf(inner)
        selector = position_selector(positions)
        removed = ivf.remove_ids(selector)
        if isinstance(inner, faiss.IndexRefine):
            faiss.downcast_index(inner.refine_index).remove_ids(selector)
            inner.ntotal = ivf.ntotal
        if removed != len(positions):
            raise RuntimeError(f"removed {removed} of {len(positions)} vectors")
        lists = ivf.invlists
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if size:
                stored = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
                stored -= np.searchsorted(positions, stored)  # in place: the list's own ids

    @staticmethod
    def _ivf(inner: Any) -> Any:
        if isinstance(inner, faiss.IndexRefine):
            return faiss.downcast_index(inner.base_index)
        return inner


@hookimpl
def register_retrievers(register):
    register("faiss-ivfpq", FaissIVFPQRetriever)
