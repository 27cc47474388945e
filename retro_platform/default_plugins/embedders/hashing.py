"""``hashing``: a model-free embedder of hashed word and byte n-gram counts.

Deterministic across processes and machines (the hash is our own, never Python's salted
``hash()``), needs no download, and embeds tens of thousands of chunks a second on one core:
for tests, smoke runs and corpora too large for a neural embedder. Its neighbours are lexical
(shared identifiers and spellings), not semantic.

Each text is lower-cased and its whitespace runs collapsed to one space; then every word
(a run of letters, digits, ``_`` or non-ASCII bytes) and every byte n-gram of the text padded
with a space on both sides adds +1 or -1 (a second hash bit) to one of ``dimension`` buckets.
The signed counts are scaled to unit length; a text with no feature (only whitespace and
fewer than ``ngram - 2`` other bytes) gets the zero vector. Everything after the per-text
normalisation is vectorised with numpy over a block of texts at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from pydantic import Field

from retro_platform.errors import ConfigError
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import Embedder, PluginOptions

_U64 = np.uint64
#: Odd multiplier of the word hash (a 64-bit polynomial hash) and its inverse modulo 2**64.
_BASE = 0x9E3779B97F4A7C15
_BASE_INVERSE = pow(_BASE, -1, 2**64)
#: Seeds that keep word and n-gram features apart.
_WORD_SEED = 0x243F6A8885A308D3
_NGRAM_SEED = 0x13198A2E03707344
#: Texts per vectorised block: bounds memory at a few tens of MB.
_BLOCK = 4096

#: Bytes that belong to words: ASCII letters and digits, '_', and every non-ASCII byte.
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[[ord(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"]] = (
    True
)
_WORD_BYTE[0x80:] = True


def _mix(keys: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64's finaliser of ``keys + seed``: every output bit depends on every input bit."""
    z = keys + _U64(seed)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def _powers(base: int, n: int) -> np.ndarray:
    """``base**1 ... base**n`` modulo 2**64 (numpy's unsigned arithmetic wraps)."""
    return np.cumprod(np.full(n, base, dtype=_U64), dtype=_U64)


class HashingOptions(PluginOptions):
    """``[embedder] name = "hashing"``."""

    dimension: int = Field(256, ge=1, le=1 << 20, description="length of every vector")
    ngram: int = Field(3, ge=0, le=8, description="byte n-gram length (0: word features only)")
    words: bool = Field(True, description="also count whole words")


class HashingEmbedder(Embedder):
    """Signed feature hashing of words and byte n-grams (see the module docstring)."""

    Options: ClassVar[type[PluginOptions]] = HashingOptions

    def __init__(self, options: HashingOptions) -> None:
        super().__init__(options)
        if options.ngram == 0 and not options.words:
            raise ConfigError("the hashing embedder needs ngram >= 1 or words = true")

    @property
    def dimension(self) -> int:
        return self.options.dimension

    @property
    def normalized(self) -> bool:
        return True  # every vector but that of a featureless text

    @property
    def batch_size(self) -> int:
        return _BLOCK

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        texts = list(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), _BLOCK):
            out[start : start + _BLOCK] = self._embed_block(texts[start : start + _BLOCK])
        return out

    def _embed_block(self, texts: list[str]) -> np.ndarray:
        encoded = [
            (" " + " ".join(text.lower().split()) + " ").encode("utf-8", "replace")
            for text in texts
        ]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)  # text of each byte
        buckets: list[np.ndarray] = []
        docs: list[np.ndarray] = []
        if self.options.ngram:
            keys, starts = self._ngrams(data, doc)
            buckets.append(_mix(keys, _NGRAM_SEED))
            docs.append(doc[starts])
        if self.options.words:
            keys, starts = self._words(data)
            buckets.append(_mix(keys, _WORD_SEED))
            docs.append(doc[starts])
        hashed = np.concatenate(buckets)
        rows = np.concatenate(docs)
        dim = self.dimension
        cells = rows * dim + (hashed % _U64(dim)).astype(np.int64)
        signs = 1.0 - 2.0 * (hashed >> _U64(63)).astype(np.float64)
        counts = np.bincount(cells, weights=signs, minlength=len(texts) * dim)
        vectors = counts.reshape(len(texts), dim).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return vectors

    def _ngrams(self, data: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The byte n-grams within one text: their bytes packed into a uint64, and start."""
        n = self.options.ngram
        count = len(data) - n + 1
        if count <= 0:
            return np.zeros(0, dtype=_U64), np.zeros(0, dtype=np.int64)
        keys = data[:count].astype(_U64)
        for offset in range(1, n):
            keys |= data[offset : offset + count].astype(_U64) << _U64(8 * offset)
        starts = np.flatnonzero(doc[:count] == doc[n - 1 :])
        return keys[starts], starts

    @staticmethod
    def _words(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every word's polynomial hash ``sum(byte[j] * BASE**(j - start))``, and its start.

        Texts are padded with spaces, so no word runs from one text into the next. With
        prefix sums of ``byte[j] * BASE**j`` a word is a difference of two prefix sums,
        brought back to its start by the inverse powers: no loop over words.
        """
        is_word = _WORD_BYTE[data]
        edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)  # one past each word's last byte
        if len(starts) == 0:
            return np.zeros(0, dtype=_U64), starts
        powers = _powers(_BASE, len(data))  # BASE**(j + 1)
        prefix = np.concatenate(
            [np.zeros(1, dtype=_U64), np.cumsum(data.astype(_U64) * powers, dtype=_U64)]
        )
        inverse = np.concatenate([np.ones(1, dtype=_U64), _powers(_BASE_INVERSE, len(data))])
        keys = (prefix[ends] - prefix[starts]) * inverse[starts + 1]
        return keys ^ (ends - starts).astype(_U64), starts


@hookimpl
def register_embedders(register):
    register("hashing", HashingEmbedder)
