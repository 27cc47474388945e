"""Incremental decoding with the cache equals the full forward pass over the same tokens and
neighbours, whatever the step sizes, across chunk boundaries and for every encoding."""

from __future__ import annotations

import pytest
import torch

from tests.model.factory import ENCODINGS, random_tokens, small_retro

M = 8  # chunk size of small_retro
TOL = 1e-4


def decode_in_steps(model, seq, retrieved, steps, *, retrieval=True):
    """Logits of ``seq`` fed in steps of the given sizes, each step with the neighbours of the
    chunks it completes."""
    cache = model.new_cache(seq.shape[0], retrieval=retrieval)
    outputs, start = [], 0
    for size in steps:
        end = start + size
        completed = range(start // M, end // M)
        given = None
        if retrieval and len(completed):
            given = retrieved[:, completed.start : completed.stop]
        outputs.append(model.decode(seq[:, start:end], cache, given))
        start = end
    assert cache.length == seq.shape[1]
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    "steps",
    [
        [1] * 44,  # token by token, through 5 chunk boundaries and a partial last chunk
        [13] + [1] * 31,  # a prompt ending mid-chunk, then single tokens
        [16, 3, 9, 1, 7, 8],  # steps that end on, before and past chunk boundaries
        [44],  # everything at once: the prefill alone
    ],
    ids=["token-by-token", "prompt-mid-chunk", "mixed-steps", "one-step"],
)
def test_cached_decoding_equals_the_full_forward_pass(encoding, steps):
    torch.manual_seed(0)
    model = small_retro(positional_encoding=encoding)
    n = sum(steps)
    seq = random_tokens(3, n)
    retrieved = random_tokens(3, n // M, 2, 2 * M)
    retrieved[0, 1, 1, 5:] = 0  # padding in one neighbour: the mask path
    with torch.no_grad():
        full = model(seq, retrieved)
        cached = decode_in_steps(model, seq, retrieved, steps)
    torch.testing.assert_close(cached, full, atol=TOL, rtol=0)


def test_cached_decoding_with_retrieval_off_equals_the_plain_decoder():
    model = small_retro()
    seq = random_tokens(2, 30)
    with torch.no_grad():
        full = model(seq, None)
        cached = decode_in_steps(model, seq, None, [5] + [1] * 25, retrieval=False)
    torch.testing.assert_close(cached, full, atol=TOL, rtol=0)


def test_the_cache_keeps_each_row_apart():
    """A row's logits do not depend on the other rows of its batch."""
    model = small_retro()
    seq = random_tokens(3, 20)
    retrieved = random_tokens(3, 20 // M, 2, 2 * M)
    with torch.no_grad():
        together = decode_in_steps(model, seq, retrieved, [4] + [1] * 16)
        alone = decode_in_steps(model, seq[1:2], retrieved[1:2], [4] + [1] * 16)
    torch.testing.assert_close(together[1:2], alone, atol=TOL, rtol=0)


def test_neighbours_that_are_all_padding_change_nothing():
    model = small_retro()
    seq = random_tokens(1, 20)
    padding = torch.zeros(1, 20 // M, 2, 2 * M, dtype=torch.long)
    with torch.no_grad():
        with_padding = decode_in_steps(model, seq, padding, [1] * 20)
        without = decode_in_steps(model, seq, None, [1] * 20, retrieval=False)
    torch.testing.assert_close(with_padding, without, atol=TOL, rtol=0)


def test_wrong_neighbours_for_a_step_are_refused():
    model = small_retro()
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match="1 chunk\\(s\\) complete in this step"):
        model.decode(random_tokens(1, M), cache, None)
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match="this step needs \\(1, 1, k, 16\\)"):
        model.decode(random_tokens(1, M), cache, random_tokens(1, 2, 2, 2 * M))
    with pytest.raises(ValueError, match="retrieval off"):
        model.decode(
            random_tokens(1, 2), model.new_cache(1, retrieval=False), random_tokens(1, 0, 2, 16)
        )
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match="exceeds max_seq_len=64"):
        model.decode(random_tokens(1, 65), cache, None)
