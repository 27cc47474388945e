"""Generation with the paper's autoretrieval, decoded incrementally with the model's cache.

Each time a chunk of ``m`` tokens completes (in the prompt or the output) it is retrieved for:
decoded to text, embedded, searched, and its ``k`` neighbours given to the model with the
token that completes it. The model's chunked cross-attention lets only positions from that
chunk's last token onward see them, so every generated token sees the neighbours of every chunk
completed before it and nothing else; the generated chunk ``u + 1`` is conditioned on the
neighbours of chunk ``u``.

A batch of prompts of different lengths is decoded in lock-step: every row is at the same
position, so chunk boundaries, positions and the cache are shared. The first step feeds the
shortest prompt's length; until a longer prompt is used up, its next token is taken from the
prompt rather than sampled. A row that has finished is fed padding (its outputs are discarded
and it retrieves nothing) until every row is done.

When the text outgrows the model's ``max_seq_len``, the model reads the longest chunk-aligned
window that fits (the oldest chunks are dropped, their neighbours with them) and the cache is
rebuilt over that window: the same as recomputing the window from scratch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from retro_platform.errors import ConfigError
from retro_platform.generation.retrieval import Retrieved
from retro_platform.generation.sampling import SamplingSettings, pick_tokens


class Retrieve(Protocol):
    """Completed chunks ``(c, m)`` in, their :class:`Retrieved` neighbours out."""

    def __call__(self, chunks: np.ndarray) -> Retrieved: ...


@dataclass(frozen=True)
class ChunkRetrieval:
    """One autoretrieval: chunk ``chunk`` of the text (from the prompt or generated), and the
    neighbours it retrieved, nearest first; they condition the chunk after it."""

    chunk: int
    in_prompt: bool
    query_ids: tuple[int, ...]
    ids: tuple[int, ...]
    scores: tuple[float, ...]


@dataclass
class Generation:
    """One row's generation: its prompt and new token ids, why it ended ("length", "stop" or
    the stop string), and every retrieval made for it."""

    prompt_ids: list[int]
    generated_ids: list[int] = field(default_factory=list)
    finish: str = "length"
    retrievals: list[ChunkRetrieval] = field(default_factory=list)


#: New positions the token buffer has room for at first (it doubles when full).
_FIRST_ROOM = 4096

#: Called with (row, token id) as each new token of a row is chosen.
OnToken = Callable[[int, int], None]
#: Called with (position, logits) of every decoding step: ``logits`` ``(rows, vocab)`` are the
#: predictions for ``position`` (tests and benchmarks compare them with a full forward pass).
OnLogits = Callable[[int, torch.Tensor], None]


def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    retrieve: Retrieve | None,
    settings: SamplingSettings,
    *,
    pad_id: int,
    decode: Callable[[Sequence[int]], str] | None = None,
    on_token: OnToken | None = None,
    on_logits: OnLogits | None = None,
    device: torch.device | str = "cpu",
) -> list[Generation]:
    """Continue each prompt (token ids) with autoretrieval; ``retrieve`` None generates with
    retrieval off. ``decode`` (the tokenizer's) is needed only for stop strings.

    Raises:
        ConfigError: an empty prompt, a prompt longer than ``max_seq_len``, or one holding the
            padding id.
    """
    check_prompts(model, prompts, pad_id)
    if settings.stop and decode is None:
        raise ValueError("stop strings need decode")

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _Decoder(model, prompts, retrieve, settings, pad_id, decode, device).run(
                on_token, on_logits
            )
    finally:
        model.train(was_training)


def check_prompts(model: nn.Module, prompts: Sequence[Sequence[int]], pad_id: int) -> None:
    """Refuse what :func:`generate_samples` cannot continue, before anything slow is loaded.

    Raises:
        ConfigError: an empty prompt, a prompt longer than ``max_seq_len``, or one holding the
            padding id.
    """
    m, max_len = model.chunk_size, model.max_seq_len
    if max_len < m:
        raise ValueError(f"max_seq_len {max_len} is shorter than one chunk ({m})")
    for number, prompt in enumerate(prompts, start=1):
        if len(prompt) == 0:
            raise ConfigError(f"prompt {number} is empty; give at least one token of text")
        if len(prompt) > max_len:
            raise ConfigError(
                f"prompt {number} is {len(prompt)} tokens; the model reads at most "
                f"{max_len} (max_seq_len): shorten it"
            )
        if pad_id in prompt:
            raise ConfigError(f"prompt {number} holds the padding id {pad_id}")


class _Decoder:
    """The state of one batched generation (see the module docstring)."""

    def __init__(self, model, prompts, retrieve, settings, pad_id, decode, device) -> None:
        self.model, self.retrieve, self.settings = model, retrieve, settings
        self.pad_id, self.decode, self.device = pad_id, decode, torch.device(device)
        self.m = model.chunk_size
        self.rows = [Generation([int(t) for t in prompt]) for prompt in prompts]
        # room for the tokens up to a length, grown as needed (see _choose): max_tokens may be
        # far more than will ever be made (until Ctrl-C) or than memory holds
        longest = max(len(p) for p in prompts) + min(settings.max_tokens, _FIRST_ROOM)
        self.tokens = np.full((len(prompts), longest), pad_id, dtype=np.int64)
        for row, prompt in enumerate(prompts):
            self.tokens[row, : len(prompt)] = prompt
        self.done = np.zeros(len(prompts), dtype=bool)
        self.neighbours: dict[int, np.ndarray] = {}  # chunk -> (rows, k, r) tokens
        self.generators = settings.generators(len(prompts))
        self.start = 0  # the first position the model's window holds

    def run(self, on_token: OnToken | None, on_logits: OnLogits | None) -> list[Generation]:
        fed = min(len(row.prompt_ids) for row in self.rows)
        logits = self._prefill(fed)
        while True:
            if on_logits is not None:
                on_logits(fed, logits)
            self._choose(fed, logits, on_token)
            if self.done.all():
                return self.rows
            if (fed + 1) % self.m == 0:
                self._retrieve_chunk((fed + 1) // self.m - 1)
            if fed + 1 - self.start > self.model.max_seq_len:
                logits = self._slide(fed + 1)
            else:
                logits = self._step(fed, fed + 1)
            fed += 1

    # -- feeding the model ----------------------------------------------------------------------

    def _prefill(self, end: int) -> torch.Tensor:
        """A new cache over positions ``start...end``; the logits predicting ``end``."""
        self.cache = self.model.new_cache(len(self.rows), retrieval=self.retrieve is not None)
        first_chunk = self.start // self.m
        for chunk in range(first_chunk, end // self.m):
            if chunk not in self.neighbours:
                self._retrieve_chunk(chunk)
        return self._step(self.start, end)

    def _slide(self, end: int) -> torch.Tensor:
        overflow = end - self.model.max_seq_len
        self.start = -(-overflow // self.m) * self.m  # the chunk-aligned window that fits
        for chunk in [c for c in self.neighbours if c < self.start // self.m]:
            del self.neighbours[chunk]
        return self._prefill(end)

    def _step(self, begin: int, end: int) -> torch.Tensor:
        """Feed positions ``begin...end`` (all rows); the logits predicting ``end``."""
        ids = torch.from_numpy(self.tokens[:, begin:end]).to(self.device)
        completed = range(begin // self.m, end // self.m)
        retrieved = None
        if self.retrieve is not None and len(completed):
            stacked = np.stack([self.neighbours[u] for u in completed], axis=1)
            retrieved = torch.from_numpy(stacked).to(self.device)
        return self.model.decode(ids, self.cache, retrieved)[:, -1]

    # -- tokens and retrieval ---------------------------------------------------------------------

    def _choose(self, position: int, logits: torch.Tensor, on_token: OnToken | None) -> None:
        """Position ``position`` of every row: its prompt's token, a new one, or padding (which
        already fills finished rows). Only the rows that choose draw from their generators."""
        rows = [
            row
            for row, generation in enumerate(self.rows)
            if position >= len(generation.prompt_ids) and not self.done[row]
        ]
        if not rows:
            return
        if position >= self.tokens.shape[1]:
            more = np.full_like(self.tokens, self.pad_id)
            self.tokens = np.concatenate([self.tokens, more], axis=1)
        generators = [self.generators[row] for row in rows]
        picked = pick_tokens(logits[rows], self.settings, generators, self.pad_id)
        for row, token in zip(rows, picked, strict=True):
            generation = self.rows[row]
            self.tokens[row, position] = token
            generation.generated_ids.append(token)
            if on_token is not None:
                on_token(row, token)
            self._check_finished(row, generation)

    def _check_finished(self, row: int, generation: Generation) -> None:
        if len(generation.generated_ids) >= self.settings.max_tokens:
            self.done[row], generation.finish = True, "length"
        if self.settings.stop and stop_reached(
            generation.generated_ids, self.decode, self.settings.stop
        ):
            self.done[row], generation.finish = True, "stop"

    def _retrieve_chunk(self, chunk: int) -> None:
        """Retrieve for chunk ``chunk`` of every unfinished row."""
        if self.retrieve is None:
            return
        span = slice(chunk * self.m, (chunk + 1) * self.m)
        active = np.flatnonzero(~self.done)
        found = self.retrieve(self.tokens[active, span])
        k, r = found.tokens.shape[1:]
        tokens = np.full((len(self.rows), k, r), self.pad_id, dtype=np.int64)
        tokens[active] = found.tokens
        self.neighbours[chunk] = tokens
        for i, row in enumerate(active):
            generation = self.rows[row]
            generation.retrievals.append(
                ChunkRetrieval(
                    chunk=chunk,
                    in_prompt=(chunk + 1) * self.m <= len(generation.prompt_ids),
                    query_ids=tuple(int(t) for t in self.tokens[row, span]),
                    ids=tuple(int(t) for t in found.ids[i]),
                    scores=tuple(float(s) for s in found.scores[i]),
                )
            )


def stop_reached(
    generated_ids: Sequence[int], decode: Callable[[Sequence[int]], str], stop: Sequence[str]
) -> bool:
    """Whether the newest tokens complete one of the ``stop`` strings. Only the tail is decoded,
    long enough to hold any of them whole: a token is at least one byte and a character at most
    four (a byte-level tokenizer takes 3 tokens for each character of a CJK stop string)."""
    longest = max(len(s) for s in stop)
    tail = decode(generated_ids[-(4 * longest + 4) :])
    return any(s in tail for s in stop)


def generated_text(
    generation: Generation, decode: Callable[[Sequence[int]], str], stop: Sequence[str]
) -> str:
    """The new text of ``generation``, cut before the first stop string."""
    text = decode(generation.generated_ids)
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text
