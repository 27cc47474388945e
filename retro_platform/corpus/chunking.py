"""Cut a tokenized document into chunks of ``chunk_size`` tokens, each with its exact text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from retro_platform.protocols.tokenizer import Encoding


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk of a document: tokens ``[token_start, token_end)`` and the text they cover."""

    position: int
    token_start: int
    token_end: int
    text: str
    token_ids: np.ndarray  # (token_end - token_start,) int32


def chunk_document(text: str, encoding: Encoding, chunk_size: int) -> list[ChunkSpan]:
    """Consecutive chunks of ``chunk_size`` tokens; the last one may be shorter.

    A chunk's text runs from its first token's start to the next chunk's first token's start
    (the first chunk from the start of the document, the last to its end), so the chunks'
    texts concatenate back to the document and whitespace between tokens is never lost.
    """
    return list(iter_chunks(text, encoding, chunk_size))


def iter_chunks(text: str, encoding: Encoding, chunk_size: int) -> Iterator[ChunkSpan]:
    """:func:`chunk_document` one chunk at a time (a large document's chunks, all held at once,
    take about 13 times its size in memory)."""
    ids = np.asarray(encoding.ids, dtype=np.int32)
    starts = np.asarray(encoding.starts, dtype=np.int64)
    for position, first in enumerate(range(0, len(ids), chunk_size)):
        last = min(first + chunk_size, len(ids))
        begin = 0 if first == 0 else int(starts[first])
        end = len(text) if last == len(ids) else int(starts[last])
        yield ChunkSpan(position, first, last, text[begin:end], ids[first:last])
