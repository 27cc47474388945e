"""The trained model is the one validation built: the same arguments, from one function."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from retro_platform.config.experiment import experiment_from_dict
from retro_platform.config.rules import build_meta_model, model_kwargs
from retro_platform.model.config import RetroConfig
from retro_platform.training.model_factory import build_model


def test_validation_and_training_build_the_same_model(tmp_path: Path) -> None:
    experiment = experiment_from_dict(
        {"retrieval": {"chunk_size": 16}, "train": {"seq_len": 64}, "model": {"dec_dim": 32}},
        base_dir=tmp_path,
    )
    kwargs = model_kwargs(experiment, num_tokens=50, pad_id=3)
    built = build_model(experiment, 50, 3).config
    assert built.neighbour_len == 32  # a chunk of 16 plus its continuation
    assert built == RetroConfig(**kwargs)
    validated = build_meta_model(experiment, num_tokens=50).config  # padding id 0
    assert dataclasses.replace(validated, pad_id=3) == built
