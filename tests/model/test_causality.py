"""RETRO's causality rules, checked by perturbation: no position may depend on the future."""

from __future__ import annotations

import pytest
import torch

from tests.model.factory import ENCODINGS, random_tokens, small_retro

M = 8  # chunk size of small_retro
ATOL = 1e-6


def changed_positions(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Positions (over the sequence axis) where any logit of any batch row differs."""
    return ((a - b).abs() > ATOL).flatten(2).any(-1).any(0).nonzero().flatten()


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("with_retrieval", [True, False])
def test_changing_a_token_changes_no_earlier_logit(encoding, with_retrieval):
    model = small_retro(positional_encoding=encoding)
    seq = random_tokens(2, 44)
    retrieved = random_tokens(2, 44 // M, 2, 2 * M) if with_retrieval else None
    with torch.no_grad():
        base = model(seq, retrieved)
        # first token, chunk boundaries on both sides, the CCA shift point, the last token
        for t in (0, M - 2, M - 1, M, 2 * M - 1, 2 * M, 3 * M + 3, 43):
            changed = seq.clone()
            changed[:, t] = changed[:, t] % 49 + 1
            moved = changed_positions(model(changed, retrieved), base)
            assert moved.numel() > 0, f"token {t} changed nothing at all"
            assert moved.min() >= t, f"changing token {t} changed logits at {moved.tolist()}"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_neighbours_of_chunk_u_reach_only_positions_from_the_end_of_chunk_u(encoding):
    model = small_retro(positional_encoding=encoding)
    n = 44  # 5 full chunks and a partial one
    seq = random_tokens(2, n)
    retrieved = random_tokens(2, n // M, 3, 2 * M)
    with torch.no_grad():
        base = model(seq, retrieved)
        for u in range(n // M):
            other = retrieved.clone()
            other[:, u] = random_tokens(2, 3, 2 * M)
            moved = changed_positions(model(seq, other), base)
            first_allowed = (u + 1) * M - 1
            assert moved.numel() > 0, f"neighbours of chunk {u} changed nothing: CCA is dead"
            assert moved.min() >= first_allowed, (
                f"neighbours of chunk {u} changed positions {moved.tolist()}, "
                f"earlier than {first_allowed}"
            )


def test_the_first_chunk_minus_one_positions_never_depend_on_any_neighbour():
    model = small_retro()
    seq = random_tokens(1, 40)
    with torch.no_grad():
        base = model(seq, random_tokens(1, 5, 2, 2 * M))
        for _ in range(5):
            out = model(seq, random_tokens(1, 5, 2, 2 * M))
            assert torch.equal(out[:, : M - 1], base[:, : M - 1])
            assert not torch.allclose(out[:, M - 1 :], base[:, M - 1 :])


def test_seed_sized_chunks_positions_0_to_62_see_no_neighbour():
    # the paper's chunk size of 64: positions 0..62 never depend on retrieval
    model = small_retro(chunk_size=64, max_seq_len=256, num_tokens=50)
    seq = random_tokens(1, 192)
    with torch.no_grad():
        a = model(seq, random_tokens(1, 3, 2, 128))
        b = model(seq, random_tokens(1, 3, 2, 128))
    moved = changed_positions(a, b)
    assert moved.min() == 63


def test_causality_holds_in_training_mode_gradients():
    # the same rule through the backward pass: the loss at position p has no gradient with
    # respect to the neighbours of chunks whose window starts after p
    model = small_retro(enc_dim=32).train()
    seq = random_tokens(1, 33)
    retrieved = random_tokens(1, 4, 2, 2 * M)
    embedded = []
    model.token_emb.register_forward_hook(lambda mod, inp, out: embedded.append(out) or None)
    logits = model(seq[:, :-1], retrieved)
    neighbour_embeddings = embedded[1]  # second lookup: the neighbours
    neighbour_embeddings.retain_grad()
    logits[:, : 2 * M - 1].sum().backward()  # positions before chunk 1's window
    grad = neighbour_embeddings.grad.abs().flatten(2).sum(-1)  # (b, u, k)
    assert grad[:, 0].sum() > 0, "chunk 0's neighbours should reach position 7..14"
    assert grad[:, 1:].sum() == 0
