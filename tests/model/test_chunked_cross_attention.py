"""Chunked cross-attention: the paper's relative distances, windows, and edge cases."""

from __future__ import annotations

import torch

from retro_platform.default_plugins.positional_encodings.rotary import RotaryEncoding
from retro_platform.protocols import PositionalEncoding
from tests.model.factory import random_tokens, small_retro

M = 8


class RecordingEncoding(PositionalEncoding):
    """No positions at all, but it records which positions each attention asked about."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def rotate(self, q, k, q_positions, k_positions):
        self.calls.append((q_positions, k_positions))
        return q, k


def test_cca_distance_between_window_offset_i_and_neighbour_token_j_is_i_minus_j_plus_m_minus_1():
    model = small_retro()
    model.positions["chunked_cross"] = RecordingEncoding(
        role="chunked_cross", dim=32, heads=2, dim_head=12, max_positions=32, causal=False
    )
    k = 3
    with torch.no_grad():
        model(random_tokens(1, 40), random_tokens(1, 5, k, 2 * M))
    calls = model.positions["chunked_cross"].calls
    assert len(calls) == 2  # one per CCA layer
    q_pos, k_pos = calls[0]
    distance = q_pos[:, None] - k_pos[None, :]
    i = torch.arange(M)[:, None]
    j = torch.arange(2 * M).repeat(k)[None, :]  # every neighbour's tokens restart at 0
    assert torch.equal(distance, i - j + M - 1)


def test_rotary_scores_depend_only_on_the_position_difference():
    rotary = RotaryEncoding(role="chunked_cross", dim=8, heads=1, dim_head=8, max_positions=64,
                            causal=False)  # fmt: skip
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(q_pos: int, k_pos: int) -> float:
        rq, rk = rotary.rotate(q, k, torch.tensor([q_pos]), torch.tensor([k_pos]))
        return float((rq * rk).sum())

    assert abs(score(7, 0) - score(30, 23)) < 1e-4
    assert abs(score(7, 0) - score(8, 0)) > 1e-4


def test_all_padding_neighbours_give_finite_outputs_and_gradients():
    model = small_retro()
    retrieved = random_tokens(2, 4, 2, 2 * M)
    retrieved[:, 2] = 0  # chunk 2: every neighbour is padding
    retrieved[0, 1, 1, 10:] = 0  # a neighbour with a padded continuation
    with torch.no_grad():
        assert torch.isfinite(model(random_tokens(2, 32), retrieved)).all()
    loss = model.train()(random_tokens(2, 33), retrieved, return_loss=True)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padding_in_neighbours_carries_no_weight():
    # whatever the padding token embeds to, masked keys must leave every logit unchanged
    model = small_retro()
    seq = random_tokens(2, 32)  # ids 1..49: the decoder itself never reads padding
    retrieved = random_tokens(2, 4, 2, 2 * M)
    retrieved[:, 2] = 0
    retrieved[:, 1, 1, 5:] = 0
    with torch.no_grad():
        before = model(seq, retrieved)
        model.token_emb.weight[0].normal_(std=5.0)
        after = model(seq, retrieved)
        assert torch.allclose(before, after, atol=1e-5)
        # ... while the same change does matter when the neighbours hold no padding
        unpadded = random_tokens(2, 4, 2, 2 * M)
        unpadded[:, 1, 1, 5:] = 0
        model.token_emb.weight[0].normal_(std=5.0)
        assert not torch.allclose(model(seq, unpadded), after, atol=1e-5)


def test_a_chunk_whose_neighbours_are_all_padding_gets_no_cca_update():
    # window 2 (positions 23..30) reads the neighbours of chunk 2; with them all padding its
    # logits must equal those of a model run whose chunk-2 neighbours are *different* padding
    model = small_retro()
    seq = random_tokens(1, 32)
    retrieved = random_tokens(1, 4, 2, 2 * M)
    retrieved[:, 2] = 0
    with torch.no_grad():
        a = model(seq, retrieved)
        model.token_emb.weight[0].normal_(std=5.0)
        b = model(seq, retrieved)
    assert torch.allclose(a[:, 3 * M - 1 : 4 * M - 1], b[:, 3 * M - 1 : 4 * M - 1], atol=1e-5)


def test_retrieval_off_equals_the_same_model_without_cca_layers():
    with_cca = small_retro()
    without = small_retro(dec_cross_attn_layers=())
    missing, unexpected = without.load_state_dict(with_cca.state_dict(), strict=False)
    assert not missing
    assert unexpected and all(".cross_" in k or k.startswith(("encoder", "to_encoder", "positions.enc", "positions.chunked")) for k in unexpected)  # fmt: skip
    seq = random_tokens(2, 40)
    with torch.no_grad():
        assert torch.allclose(with_cca(seq, None), without(seq, None), atol=1e-6)
        # and the same with neighbours given to the model that has no CCA
        assert torch.allclose(with_cca(seq, None), without(seq, random_tokens(2, 5, 2, 16)))


def test_sequences_shorter_than_a_chunk_and_partial_chunks_work():
    model = small_retro()
    with torch.no_grad():
        assert model(random_tokens(1, 5), random_tokens(1, 0, 2, 16)).shape == (1, 5, 50)
        assert model(random_tokens(1, 5), None).shape == (1, 5, 50)
        # a partial trailing chunk: its neighbours may be given and are ignored
        seq = random_tokens(1, 21)
        two = random_tokens(1, 2, 2, 16)
        three = torch.cat([two, random_tokens(1, 1, 2, 16)], dim=1)
        assert torch.equal(model(seq, two), model(seq, three))


def test_one_neighbour_may_be_given_without_the_neighbour_axis():
    model = small_retro()
    seq, retrieved = random_tokens(1, 16), random_tokens(1, 2, 16)
    with torch.no_grad():
        assert torch.equal(model(seq, retrieved), model(seq, retrieved[:, :, None]))
