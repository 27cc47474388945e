"""How the next token is chosen from the model's logits: greedy, or sampled with a temperature,
top-k and top-p (nucleus), each row from its own seeded generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from retro_platform.errors import ConfigError


@dataclass(frozen=True)
class SamplingSettings:
    """What a generation does: ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 keep
    every token; row ``i`` draws from a generator seeded with ``seed + i``, so a row does not
    depend on the others; generation of a row ends after ``max_tokens`` tokens or at the first
    of the ``stop`` strings (which is left out of the text)."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.temperature < math.inf:
            raise ConfigError(
                f"--temperature must be finite and at least 0 (0: greedy), got {self.temperature}"
            )
        if not -(2**63) <= self.seed < 2**63:
            raise ConfigError(f"--seed must fit in 64 bits (|seed| < 2**63), got {self.seed}")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be at least 0 (0: all tokens), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1] (1: all tokens), got {self.top_p}")
        if any(not stop for stop in self.stop):
            raise ConfigError("a --stop string must not be empty")

    def generators(self, rows: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(self.seed + row) for row in range(rows)]


def pick_tokens(
    logits: torch.Tensor,
    settings: SamplingSettings,
    generators: list[torch.Generator],
    pad_id: int,
) -> list[int]:
    """The next token of each row from ``(rows, vocab)`` logits; never padding."""
    logits = logits.float().cpu().clone()
    if 0 <= pad_id < logits.shape[-1]:
        logits[:, pad_id] = -torch.inf
    if settings.temperature == 0:
        return logits.argmax(dim=-1).tolist()
    # the best logit becomes 0 first, so a tiny temperature cannot overflow to inf - inf = nan
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / settings.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    probs = torch.softmax(logits, dim=-1)
    if settings.top_p < 1:
        probs = _nucleus(probs, settings.top_p)
    return [
        int(torch.multinomial(row, 1, generator=generator))
        for row, generator in zip(probs, generators, strict=True)
    ]


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the likeliest tokens whose probabilities sum to at least ``top_p`` (always the
    first), renormalised."""
    ordered, order = probs.sort(dim=-1, descending=True)
    before = ordered.cumsum(dim=-1) - ordered  # probability mass ahead of each token
    ordered = ordered.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, ordered)
    return kept / kept.sum(dim=-1, keepdim=True)
