"""Weight-decay groups and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from retro_platform.config.runner_tables import TrainTable
from retro_platform.model.retro import RETRO
from retro_platform.training.optim import build_optimizer, build_scheduler, decay_groups, lr_at


def tiny_retro(**kwargs) -> RETRO:
    options = dict(num_tokens=50, max_seq_len=32, enc_dim=16, enc_depth=1, dec_depth=2,
                   dec_cross_attn_layers=(2,), heads=2, dec_dim=16, dim_head=8, chunk_size=8)  # fmt: skip
    return RETRO(**{**options, **kwargs})


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    model = tiny_retro(positional_encoding="learned-absolute")
    decay, no_decay = decay_groups(model)
    assert "token_emb.weight" in no_decay
    assert "decoder_norm.weight" in no_decay and "decoder_norm.bias" in no_decay
    assert "to_logits.bias" in no_decay and "to_logits.weight" in decay
    embeddings = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)]
    assert len(embeddings) > 1  # the learned positions too
    assert all(f"{n}.weight" in no_decay for n in embeddings)
    parameters = dict(model.named_parameters())
    assert all(parameters[n].ndim >= 2 for n in decay)
    assert all(
        parameters[n].ndim < 2 or any(n.startswith(e + ".") for e in embeddings) for n in no_decay
    )
    assert sorted(decay + no_decay) == sorted(parameters)

    optimizer = build_optimizer(model, TrainTable(weight_decay=0.05))
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert by_decay[0.05] == {id(parameters[n]) for n in decay}
    assert by_decay[0.0] == {id(parameters[n]) for n in no_decay}


def test_only_trainable_parameters_are_optimised() -> None:
    model = tiny_retro()
    trainable = model.retrofit()
    optimizer = build_optimizer(model, TrainTable())
    optimised = [p for g in optimizer.param_groups for p in g["params"]]
    assert all(p.requires_grad for p in optimised)
    assert (
        sum(p.numel() for p in optimised) == trainable < sum(p.numel() for p in model.parameters())
    )


def test_warmup_then_cosine_to_the_minimum() -> None:
    train = TrainTable(steps=100, warmup_steps=10, lr=2e-3, min_lr_ratio=0.1)
    lrs = [lr_at(train, s) for s in range(100)]
    assert lrs[0] == pytest.approx(2e-3 / 10)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert lrs[9] == pytest.approx(2e-3) and lrs[10] == pytest.approx(2e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(2e-4)
    middle = 10 + (99 - 10) / 2
    assert lr_at(train, math.floor(middle)) > 1.1e-3 > lr_at(train, math.ceil(middle) + 1)

    # the scheduler follows it, and its state (a plain dict) restores it
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=train.lr)
    scheduler = build_scheduler(optimizer, train)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(lrs)
    other = torch.optim.AdamW([parameter], lr=train.lr)
    restored = build_scheduler(other, TrainTable(steps=5, warmup_steps=0, lr=train.lr))
    restored.load_state_dict(scheduler.state_dict())
    assert restored.lr_lambdas[0](50) == pytest.approx(lrs[50] / train.lr)
