"""The ``bytes`` tokenizer: one token per UTF-8 byte, id = byte + 1 (0 is padding).

No vocabulary to train or store, every text encodes and nothing is ever unknown: the simplest
baseline, at the price of sequences several times longer than a subword tokenizer's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import Encoding, Tokenizer


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted by one; 257 ids."""

    @property
    def vocab_size(self) -> int:
        return 257

    def encode(self, text: str) -> Encoding:
        # surrogatepass: a lone surrogate still takes a lead byte and continuation bytes, so
        # the character count below stays right (text decoded from UTF-8 never has one).
        data = np.frombuffer(text.encode("utf-8", errors="surrogatepass"), dtype=np.uint8)
        # A character begins at every byte that is not a continuation byte (0b10xxxxxx), so
        # the running count of such bytes, minus one, is each byte's character index.
        starts = np.cumsum((data & 0xC0) != 0x80, dtype=np.int64) - 1
        return Encoding(ids=data.astype(np.int32) + 1, starts=starts)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        data = (ids[(ids > 0) & (ids < 257)] - 1).astype(np.uint8)  # drop padding and strays
        return data.tobytes().decode("utf-8", errors="replace")


@hookimpl
def register_tokenizers(register):
    register("bytes", ByteTokenizer)
