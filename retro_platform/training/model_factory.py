"""The RETRO an experiment file describes: ``[model]`` plus what the store decides."""

from __future__ import annotations

from retro_platform.config import Experiment
from retro_platform.config.rules import model_kwargs
from retro_platform.errors import ConfigError
from retro_platform.model.retro import RETRO


def build_model(experiment: Experiment, vocab_size: int, pad_id: int) -> RETRO:
    """A freshly initialised RETRO of :func:`~retro_platform.config.rules.model_kwargs` (the
    arguments the experiment's validation built it with) for the tokenizer's vocabulary and
    padding. Seed torch first for a reproducible initialisation."""
    try:
        return RETRO(**model_kwargs(experiment, num_tokens=vocab_size, pad_id=pad_id))
    except ValueError as error:
        raise ConfigError(f"[model] {error}") from None
