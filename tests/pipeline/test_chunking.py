"""Cutting a tokenized document into chunks that keep the exact text."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from retro_platform.corpus.chunking import chunk_document
from retro_platform.plugins import build_plugin


@given(text=st.text(min_size=1, max_size=300), chunk_size=st.integers(2, 40))
def test_chunks_cover_the_document_exactly(text: str, chunk_size: int) -> None:
    tokenizer = build_plugin("tokenizers", {"name": "bytes"})
    encoding = tokenizer.encode(text)
    spans = chunk_document(text, encoding, chunk_size)
    assert "".join(span.text for span in spans) == text
    assert [span.position for span in spans] == list(range(len(spans)))
    assert all(len(span.token_ids) == chunk_size for span in spans[:-1])
    assert 1 <= len(spans[-1].token_ids) <= chunk_size
    joined = np.concatenate([span.token_ids for span in spans])
    assert np.array_equal(joined, encoding.ids)
    assert spans[-1].token_end == len(encoding.ids)


def test_a_document_shorter_than_a_chunk_is_one_chunk() -> None:
    tokenizer = build_plugin("tokenizers", {"name": "bytes"})
    spans = chunk_document("abc", tokenizer.encode("abc"), 64)
    assert len(spans) == 1 and spans[0].text == "abc" and spans[0].token_end == 3
