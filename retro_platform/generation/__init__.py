"""Generation with a trained run: the sampling loop over the model's cache (``decoding.py``),
how the next token is chosen (``sampling.py``), the one retrieval path that ``search``,
autoretrieval and the run's samples share (``retrieval.py``), and samples with their sources
(``samples.py``)."""

from __future__ import annotations

from typing import Any

from retro_platform.generation.decoding import (
    ChunkRetrieval,
    Generation,
    check_prompts,
    generate,
)
from retro_platform.generation.retrieval import (
    Neighbour,
    Retrieved,
    RunRetrieval,
    SearchHit,
    ShuffledRetrieval,
)
from retro_platform.generation.samples import Sample, generate_samples, samples_markdown
from retro_platform.generation.sampling import SamplingSettings


def search(
    experiment: Any,
    store: Any,
    query: str,
    k: int,
    *,
    embedder: Any = None,
    exclude_documents: tuple[str, ...] = (),
) -> list[SearchHit]:
    """The ``k`` chunks nearest to ``query`` in the experiment's stored index, best first."""
    retrieval = RunRetrieval(
        experiment, store, embedder=embedder, exclude_documents=exclude_documents
    )
    return retrieval.search(query, k)


__all__ = [
    "ChunkRetrieval",
    "Generation",
    "Neighbour",
    "Retrieved",
    "RunRetrieval",
    "Sample",
    "SamplingSettings",
    "SearchHit",
    "ShuffledRetrieval",
    "check_prompts",
    "generate",
    "generate_samples",
    "samples_markdown",
    "search",
]
