"""Checkpoints: atomic writes, no unpickling of objects, refusal of another model's."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from retro_platform.errors import ConfigError
from retro_platform.training.checkpoint import (
    FORMAT,
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from retro_platform.training.trainer import train


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_with_pickled_objects_is_refused_unrun(tmp_path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save({"format": FORMAT, "model": {}, "extra": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"pickled objects \(posix.mkdir\).*refused"):
        load_checkpoint(path)
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_the_trainer_refuses_such_a_checkpoint_too(setup, tmp_path) -> None:
    s = setup()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"format": FORMAT, "x": Payload(str(tmp_path / "m"))}, checkpoint_path(run_dir))
    with pytest.raises(CheckpointError, match="refused"):
        train(s.model(), s.data, s.experiment, run_dir=run_dir, device="cpu", progress=False)
    assert not (tmp_path / "m").exists()


def test_writes_are_atomic(tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"format": FORMAT, "step": 1, "w": torch.ones(3)})
    killed_write = tmp_path / ".checkpoint.pt.k1ll3d.partial.pt"
    killed_write.write_bytes(b"half a checkpoint")
    with pytest.raises(Exception):  # noqa: B017  (pickling a lambda fails midway)
        save_checkpoint(path, {"format": FORMAT, "step": 2, "bad": lambda: None})
    assert load_checkpoint(path)["step"] == 1  # the old one is intact
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left
    save_checkpoint(path, {"format": FORMAT, "step": 3})
    assert load_checkpoint(path)["step"] == 3


def test_unreadable_and_foreign_files(tmp_path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(broken)
    # text that unpickles as far as an unknown opcode is no pickled object, nor a risk: it was
    # called "holds pickled objects ... loading it could run code"
    text = tmp_path / "text.pt"
    text.write_bytes(b"garbage\n")
    with pytest.raises(CheckpointError, match="unreadable \\(not a torch.save archive\\)"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a retro-platform training checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_random_generators_round_trip(tmp_path) -> None:
    state = rng_state()
    save_checkpoint(tmp_path / "c.pt", {"format": FORMAT, "rng": state})
    draws = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0])
    assert np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_a_checkpoint_of_another_model_shape_is_a_config_error(setup, tmp_path) -> None:
    run_dir = tmp_path / "run"
    s = setup("small", train={"steps": 2})
    train(s.model(), s.data, s.experiment, run_dir=run_dir, device="cpu", progress=False)

    wider = setup("wide", model={"dec_dim": 48}, train={"steps": 2})
    with pytest.raises(ConfigError) as error:
        train(wider.model(), wider.data, wider.experiment, run_dir=run_dir, device="cpu")
    message = str(error.value)
    assert "\n" not in message and "different model" in message
    assert "dec_dim = 32 there, 48 now" in message and "[train] output" in message

    faster = setup("lr", train={"steps": 2, "lr": 1e-2})
    with pytest.raises(ConfigError, match=r"different run settings \(train.lr = 0.003 there"):
        train(faster.model(), faster.data, faster.experiment, run_dir=run_dir, device="cpu")
    assert load_checkpoint(checkpoint_path(run_dir))["step"] == 2  # nothing lost
