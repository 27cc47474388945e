"""The seam between the step and the loop: the step alone trains, does no I/O, and the loop
is nothing but the step called on the loader's batches."""

from __future__ import annotations

import pytest
import torch

from retro_platform.training.optim import build_optimizer, build_scheduler, lr_at
from retro_platform.training.step import StepOptions, TrainState, train_step
from retro_platform.training.trainer import train

DROPOUT = {"dec_attn_dropout": 0.1, "dec_ff_dropout": 0.1, "enc_ff_dropout": 0.1}


def fresh_state(s) -> TrainState:
    model = s.model()
    optimizer = build_optimizer(model, s.experiment.train)
    return TrainState(model, optimizer, build_scheduler(optimizer, s.experiment.train))


def cpu(s) -> StepOptions:
    return StepOptions(torch.device("cpu"), s.experiment.train.grad_clip, bf16=False)


def test_a_step_changes_the_parameters_and_returns_finite_metrics(setup, capsys) -> None:
    s = setup()
    state = fresh_state(s)
    capsys.readouterr()  # the stages' progress lines while setting up
    before = {name: p.detach().clone() for name, p in state.model.named_parameters()}
    batch = next(s.data.batches("train", 4, seed=s.experiment.experiment.seed))

    done = train_step(state, [batch], cpu(s))

    assert (state.step, state.tokens) == (1, done.tokens) and 0 < done.tokens <= 4 * 64
    assert torch.isfinite(done.loss) and 0 < float(done.loss) < 10
    assert torch.isfinite(done.grad_norm) and float(done.grad_norm) > 0
    assert done.lr == pytest.approx(lr_at(s.experiment.train, 0))
    moved = [n for n, p in state.model.named_parameters() if not torch.equal(p, before[n])]
    assert moved == list(before)  # retrieval on: every parameter, the encoder's too
    assert all(p.grad is None for p in state.model.parameters())  # ready for the next step
    assert capsys.readouterr() == ("", "")  # no log line, no progress bar


def test_the_loop_is_the_step_on_the_loaders_batches(setup, tmp_path) -> None:
    # dropout and accumulation: the generators and the micro-batches must line up too
    s = setup(model=DROPOUT, train={"steps": 4, "log_every": 1, "grad_accumulation": 2})
    logged: list[float] = []
    looped = s.model()
    train(looped, s.data, s.experiment, run_dir=tmp_path / "run", device="cpu",
          on_log=lambda _, m: logged.append(m["train/loss"]), progress=False)  # fmt: skip

    state = fresh_state(s)
    torch.manual_seed(s.experiment.experiment.seed)  # as the loop seeds a fresh run
    stream = s.data.batches("train", 4, seed=s.experiment.experiment.seed)
    stepped: list[float] = []
    for _ in range(4):  # grad_accumulation = 2 micro-batches a step
        stepped.append(float(train_step(state, [next(stream), next(stream)], cpu(s)).loss))

    assert stepped == logged and len(logged) == 4
    assert state.step == 4
    weights = looped.state_dict()
    assert all(torch.equal(p, weights[n]) for n, p in state.model.state_dict().items())
