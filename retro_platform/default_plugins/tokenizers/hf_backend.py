"""What the tokenizers built on Hugging Face ``tokenizers`` share: encoding into our
:class:`~retro_platform.protocols.Encoding` (with character starts) and decoding without
padding. ``bpe`` learns its backend from the corpus; ``pretrained`` loads one from a file."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tokenizers

from retro_platform.protocols import Encoding, Tokenizer


class BackendTokenizer(Tokenizer):
    """A tokenizer whose subclass provides ``backend`` (a ``tokenizers.Tokenizer``) and
    ``pad_id``; special tokens are never added to a document's ids."""

    backend: tokenizers.Tokenizer

    def encode(self, text: str) -> Encoding:
        return from_backend(self.backend.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        # The library's batch encoding runs on every core, outside the GIL.
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [from_backend(encoding) for encoding in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return decode_ids(self.backend, ids, pad_id=self.pad_id)


def from_backend(encoding: tokenizers.Encoding) -> Encoding:
    """Our :class:`Encoding` of a ``tokenizers`` one, whose offsets count characters of the
    original text (normalization undone), as ``starts`` needs."""
    offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    return Encoding(ids=np.array(encoding.ids, dtype=np.int32), starts=offsets[:, 0].copy())


def decode_ids(backend: tokenizers.Tokenizer, ids: Sequence[int] | np.ndarray, pad_id: int) -> str:
    """Text of ``ids`` without padding; ids the vocabulary does not have are dropped."""
    size = backend.get_vocab_size()
    return backend.decode(
        [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= i < size and i != pad_id],
        skip_special_tokens=True,
    )
