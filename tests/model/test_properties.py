"""Property-based checks over shapes: batch, length (multiple of the chunk or not), neighbours,
chunk size and positional encoding."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.model.factory import ENCODINGS, random_tokens, small_retro


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 3),
    chunk_size=st.sampled_from([2, 4, 8, 16]),
    neighbours=st.integers(1, 4),
    length_in_chunks=st.floats(0.2, 4.9),
    encoding=st.sampled_from(ENCODINGS),
    data=st.data(),
)
def test_shapes_finiteness_and_cca_causality(
    batch, chunk_size, neighbours, length_in_chunks, encoding, data
):
    torch.manual_seed(0)
    n = max(1, int(length_in_chunks * chunk_size))
    model = small_retro(chunk_size=chunk_size, positional_encoding=encoding, max_seq_len=96)
    u = n // chunk_size
    seq = random_tokens(batch, n)
    retrieved = random_tokens(batch, u, neighbours, 2 * chunk_size)
    with torch.no_grad():
        logits = model(seq, retrieved)
        assert logits.shape == (batch, n, 50)
        assert torch.isfinite(logits).all()
        assert torch.isfinite(model(torch.cat([seq, seq[:, :1]], 1), retrieved, return_loss=True))
        if u == 0:
            return
        chunk = data.draw(st.integers(0, u - 1), label="perturbed chunk")
        other = retrieved.clone()
        other[:, chunk] = random_tokens(batch, neighbours, 2 * chunk_size)
        moved = (model(seq, other) - logits).abs().amax(dim=(0, 2)) > 1e-6
        first = (chunk + 1) * chunk_size - 1
        assert not moved[:first].any()
        assert moved[first:].any()


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 2), n=st.integers(1, 40), encoding=st.sampled_from(ENCODINGS))
def test_retrieval_off_is_causal_for_any_length(batch, n, encoding):
    torch.manual_seed(1)
    model = small_retro(positional_encoding=encoding)
    seq = random_tokens(batch, n)
    t = n // 2
    changed = seq.clone()
    changed[:, t] = changed[:, t] % 49 + 1
    with torch.no_grad():
        a, b = model(seq, None), model(changed, None)
    assert torch.equal(a[:, :t], b[:, :t])
    assert not torch.equal(a[:, t:], b[:, t:])
