"""The RETRO an experiment file describes: ``[model]`` plus what the store decides."""

from __future__ import annotations

from retro_platform.config import Experiment
from retro_platform.config.rules import model_kwargs
from retro_platform.errors import ConfigError
from retro_platform.model.retro import RETRO


def build_model(experiment: Experiment, vocab_size: int, pad_id: int) -> RETRO:
    """A freshly initialised RETRO: ``[model]``, the tokenizer's vocabulary and padding,
    ``[retrieval] chunk_size`` (a neighbour is that chunk plus its continuation: twice as
    long) and ``[train] seq_len`` as the longest sequence. Seed torch first for a
    reproducible initialisation."""
    kwargs = model_kwargs(experiment, num_tokens=vocab_size, pad_id=pad_id)
    kwargs["neighbour_len"] = 2 * experiment.retrieval.chunk_size
    try:
        return RETRO(**kwargs)
    except ValueError as error:
        raise ConfigError(f"[model] {error}") from None
