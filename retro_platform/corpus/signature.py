"""A tokenizer's signature: what a checkpoint records so that generation can refuse a store
whose tokenizer is not the one the model was trained with."""

from __future__ import annotations

import hashlib

from retro_platform.protocols import Tokenizer

#: Code and prose, ASCII and not: two tokenizers that cut it alike are taken to be the same.
_PROBE = (
    "def forward(self, hidden_states, attention_mask=None):\n"
    "    # The quick brown fox jumps over the lazy dog: 1234567890, café, naïve, 東京.\n"
    "    return self.dropout(torch.nn.functional.gelu(hidden_states)) + attention_mask\n"
)


def tokenizer_signature(tokenizer: Tokenizer) -> str:
    """A short hash of the vocabulary size, the padding id and how a fixed probe text is cut."""
    ids = [int(i) for i in tokenizer.encode(_PROBE).ids]
    text = f"{tokenizer.vocab_size}|{tokenizer.pad_id}|{ids}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
