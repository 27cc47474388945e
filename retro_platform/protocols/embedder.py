"""The embedder protocol: chunk text to fixed-size vectors, frozen.

RETRO retrieves by nearest neighbours over frozen embeddings of chunk text (the paper averages
a frozen BERT's token states). The same :meth:`Embedder.embed` serves stored chunks and search
queries, so both always get the same preprocessing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from retro_platform.protocols.options import PluginOptions


class Embedder(ABC):
    """Base class of embedders, registered with ``register_embedders``.

    Built as ``Embedder(options)``; loading a model may be deferred to the first
    :meth:`embed` call, but :attr:`dimension` must be known without it when cheap.
    """

    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: PluginOptions) -> None:
        self.options = options

    @property
    @abstractmethod
    def dimension(self) -> int:
        """Length of every vector."""

    @property
    def normalized(self) -> bool:
        """True when every vector has unit length (inner product is then cosine similarity),
        except that a text with nothing to embed may get the zero vector (``hashing`` gives
        one to a text of whitespace)."""
        return False

    @property
    def batch_size(self) -> int:
        """How many texts the core passes to :meth:`embed` at a time."""
        return 256

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dimension)`` float32 vectors, deterministic for a given text."""
