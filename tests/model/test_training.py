"""Training-path behaviour: loss in eval mode, activation checkpointing, RETRO-fitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.model.factory import random_tokens, small_retro

M = 8


def test_loss_equals_cross_entropy_of_the_logits_and_works_in_eval_mode():
    model = small_retro()  # eval mode
    seq, retrieved = random_tokens(2, 41), random_tokens(2, 5, 2, 2 * M)
    with torch.no_grad():
        loss = model(seq, retrieved, return_loss=True)
        logits = model(seq[:, :-1], retrieved)
    expected = F.cross_entropy(logits.transpose(1, 2), seq[:, 1:], ignore_index=0)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_padding_labels_are_ignored():
    model = small_retro()
    seq, retrieved = random_tokens(1, 41), random_tokens(1, 5, 2, 2 * M)
    padded = seq.clone()
    padded[:, 30:] = 0
    with torch.no_grad():
        logits = model(padded[:, :-1], retrieved)
        loss = model(padded, retrieved, return_loss=True)
    expected = F.cross_entropy(logits[0, :29], padded[0, 1:30])
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize("encoding", ["rotary", "t5-relative-bias"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(encoding):
    plain = small_retro(positional_encoding=encoding, dec_ff_dropout=0.0).train()
    ckpt = small_retro(positional_encoding=encoding, checkpoint_activations=True).train()
    ckpt.load_state_dict(plain.state_dict())
    seq, retrieved = random_tokens(2, 41), random_tokens(2, 5, 2, 2 * M)
    losses = []
    for model in (plain, ckpt):
        loss = model(seq, retrieved, return_loss=True)
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(*losses)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_retrofit_trains_only_the_encoder_and_cca_and_leaves_the_decoder_bit_identical():
    decoder_only = small_retro(dec_cross_attn_layers=())
    model = small_retro().train()
    total = sum(p.numel() for p in model.parameters())
    trainable = model.retrofit(decoder_only.state_dict())
    assert 0 < trainable < total
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # the decoder now holds the decoder-only model's weights
    for name, value in decoder_only.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    moving = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("decoder.") and ".cross_attn." in n for n in moving)
    assert any(n.startswith("encoder.") for n in moving)
    assert "token_emb.weight" in frozen and "to_logits.weight" in frozen

    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(random_tokens(2, 41), random_tokens(2, 5, 2, 2 * M), return_loss=True)
    loss.backward()
    optimiser.step()
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), f"frozen {name} changed"
    moved = [
        n for n, p in model.named_parameters() if n in moving and not torch.equal(p, moving[n])
    ]
    assert len(moved) == len(moving), sorted(set(moving) - set(moved))


def test_retrofit_refuses_weights_of_another_shape_of_model():
    model = small_retro()
    other = small_retro(dec_depth=4, dec_cross_attn_layers=()).state_dict()
    with pytest.raises(ValueError, match="do not match"):
        model.retrofit(other)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(dec_cross_attn_layers=(0,)), "layers count from 1"),
        (dict(dec_cross_attn_layers=(9,)), "outside 1..dec_depth"),
        (dict(neighbour_len=4), "at least chunk_size"),
        (dict(dec_attn_dropout=1.5), r"\[0, 1\)"),
        (dict(positional_encoding="rotory"), "did you mean 'rotary'"),
        (dict(positional_encoding_options={"spin": 2}), "spin"),
        (dict(heads=0), "positive integer"),
    ],
)
def test_bad_configuration_is_refused_with_a_clear_message(overrides, message):
    with pytest.raises(Exception, match=message):
        small_retro(**overrides)


@pytest.mark.parametrize(
    ("seq_len", "retrieved_shape", "message"),
    [
        (40, (1, 4, 2, 16), r"needs \(1, 5, k, 16\)"),
        (40, (1, 5, 2, 12), r"needs \(1, 5, k, 16\)"),
        (40, (1, 5, 16), None),
        (80, None, "longer than max_seq_len"),
    ],
)
def test_bad_input_shapes_are_refused(seq_len, retrieved_shape, message):
    model = small_retro()
    seq = random_tokens(1, seq_len)
    retrieved = None if retrieved_shape is None else random_tokens(*retrieved_shape)
    if message is None:
        model(seq, retrieved)
        return
    with pytest.raises(ValueError, match=message):
        model(seq, retrieved)
