"""The tokenizer protocol: text to token ids, with where each token starts in the text.

Start offsets let the core cut a document into chunks of ``chunk_size`` tokens and keep each
chunk's exact text (the span of the document from its first token's start to the next chunk's),
which is what the embedder sees and what ``search`` shows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from retro_platform.protocols.options import PluginOptions


@dataclass(frozen=True)
class Encoding:
    """A tokenized text.

    Attributes:
        ids: ``(tokens,)`` int32 token ids, none equal to the tokenizer's ``pad_id``.
        starts: ``(tokens,)`` int64, the index into the text (in characters) where each token
            begins; non-decreasing.
    """

    ids: np.ndarray
    starts: np.ndarray


class Tokenizer(ABC):
    """Base class of tokenizers, registered with ``register_tokenizers``.

    Built as ``Tokenizer(options)``. A tokenizer that learns from the corpus sets
    ``needs_training = True``: before ingest, the core calls :meth:`train` with the corpus text
    and a path in the store's folder, and in later stages (or runs) :meth:`load` with that path,
    so every stage uses the same vocabulary.
    """

    Options: ClassVar[type[PluginOptions]] = PluginOptions
    needs_training: ClassVar[bool] = False

    def __init__(self, options: PluginOptions) -> None:
        self.options = options

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (ids are ``0 .. vocab_size - 1``), padding included."""

    @property
    def pad_id(self) -> int:
        """The id of padding: never produced by :meth:`encode`; the model masks it."""
        return 0

    @abstractmethod
    def encode(self, text: str) -> Encoding:
        """Tokenize one document's text (no special tokens added)."""

    def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        """Tokenize several texts; override when the backend batches faster."""
        return [self.encode(text) for text in texts]

    @abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids (padding dropped); for display, need not invert :meth:`encode`."""

    def train(self, texts: Iterable[str], path: Path) -> None:
        """Learn the vocabulary from ``texts`` (streamed) and save it to ``path``."""
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def load(self, path: Path) -> None:
        """Load what :meth:`train` saved at ``path``."""
        raise NotImplementedError(f"{type(self).__name__} does not train")
