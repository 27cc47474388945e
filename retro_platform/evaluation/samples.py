"""Sample generations with automatic retrieval, for the run's MLflow artifact.

Generation follows the paper's autoretrieval: each time a chunk of ``m`` tokens is complete
(in the prompt or generated), it is decoded, embedded and searched, and its ``k`` neighbours
(plus continuations) are given to the model with it. The model's chunked cross-attention lets
only positions from that chunk's last token onward see them, so every generated token sees the
neighbours of every chunk completed before it and nothing else. A chunk completed by the very
last generated token would influence nothing and is not retrieved for.

Each step recomputes the whole prefix (fine at these model sizes); when the text outgrows the
model's ``max_seq_len``, the model reads the longest chunk-aligned window that fits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from retro_platform.errors import ConfigError


class Retrieve(Protocol):
    """Neighbours of completed chunks: ``(c, m)`` token ids in, ``(c, k, 2m)`` int64 neighbour
    tokens (chunk plus continuation, padding for a missing one) and ``(c, k)`` int64 neighbour
    chunk ids (``-1``: none) out."""

    def __call__(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class NeighbourChunk:
    """A retrieved chunk as the sample record shows it (``document``/``text`` None when the
    generation was given no ``describe``)."""

    chunk_id: int
    document: str | None = None
    position: int | None = None
    text: str | None = None


@dataclass(frozen=True)
class Retrieval:
    """One autoretrieval: the completed chunk ``chunk`` (its index in the text) and what it
    retrieved, nearest first."""

    chunk: int
    in_prompt: bool
    query: str
    neighbours: tuple[NeighbourChunk, ...]


@dataclass(frozen=True)
class Sample:
    """One generation: prompt and continuation as text and ids, and every retrieval made."""

    prompt: str
    text: str
    prompt_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]
    retrievals: tuple[Retrieval, ...] = field(default_factory=tuple)


def generate_samples(
    model: nn.Module,
    prompts_ids: Sequence[Sequence[int] | np.ndarray],
    retrieve: Retrieve | None,
    *,
    max_tokens: int,
    temperature: float,
    top_k: int,
    chunk_size: int,
    pad_id: int,
    seed: int,
    decode: Callable[[Sequence[int]], str],
    describe: Callable[[np.ndarray], Mapping[int, NeighbourChunk]] | None = None,
    device: torch.device | str = "cpu",
) -> list[Sample]:
    """Continue each prompt by ``max_tokens`` tokens with autoretrieval.

    ``temperature`` 0 is greedy decoding; ``top_k`` 0 samples among all tokens. Padding is never
    generated. Sample ``i`` draws from a generator seeded with ``seed + i``, so a sample does not
    depend on the others. ``retrieve`` None generates with retrieval off (a model trained
    without it). ``decode`` turns ids into text (the tokenizer's); ``describe`` maps
    retrieved chunk ids to their documents and texts and is called once, after generating.
    """
    if max_tokens < 1:
        raise ConfigError("[generate] max_tokens must be at least 1")
    if temperature < 0:
        raise ConfigError("[generate] temperature must be at least 0 (0: greedy)")
    if top_k < 0:
        raise ConfigError("[generate] top_k must be at least 0 (0: all tokens)")
    model_chunk = getattr(model, "chunk_size", chunk_size)
    if model_chunk != chunk_size:
        raise ValueError(f"chunk_size {chunk_size} differs from the model's {model_chunk}")
    max_len = getattr(model, "max_seq_len", None)
    if max_len is not None and max_len < chunk_size:
        raise ValueError(f"max_seq_len {max_len} is shorter than one chunk ({chunk_size})")

    was_training = model.training
    model.eval()
    raw = []
    try:
        with torch.inference_mode():
            for i, prompt in enumerate(prompts_ids):
                generator = torch.Generator().manual_seed(seed + i)
                raw.append(
                    _generate_one(
                        model,
                        np.asarray(prompt, dtype=np.int64),
                        retrieve,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        top_k=top_k,
                        m=chunk_size,
                        pad_id=pad_id,
                        max_len=max_len,
                        generator=generator,
                        device=device,
                    )
                )
    finally:
        model.train(was_training)

    ids = np.unique(
        np.concatenate([r.ids.ravel() for one in raw for r in one.retrievals] or [np.empty(0)])
    ).astype(np.int64)
    known: Mapping[int, NeighbourChunk] = {}
    if describe is not None and (ids >= 0).any():
        known = describe(ids[ids >= 0])
    samples = []
    for one in raw:
        retrievals = tuple(
            Retrieval(
                chunk=r.chunk,
                in_prompt=r.in_prompt,
                query=decode(r.query),
                neighbours=tuple(
                    known.get(int(chunk_id), NeighbourChunk(int(chunk_id)))
                    for chunk_id in r.ids
                    if chunk_id >= 0
                ),
            )
            for r in one.retrievals
        )
        samples.append(
            Sample(
                prompt=decode(one.prompt),
                text=decode(one.generated),
                prompt_ids=tuple(int(t) for t in one.prompt),
                generated_ids=tuple(int(t) for t in one.generated),
                retrievals=retrievals,
            )
        )
    return samples


# ---------------------------------------------------------------------------------------------
# one prompt


@dataclass
class _RawRetrieval:
    chunk: int
    in_prompt: bool
    query: np.ndarray  # (m,) the chunk's ids
    ids: np.ndarray  # (k,) neighbour chunk ids


@dataclass
class _RawSample:
    prompt: np.ndarray
    generated: list[int]
    retrievals: list[_RawRetrieval]


def _generate_one(
    model: nn.Module,
    prompt: np.ndarray,
    retrieve: Retrieve | None,
    *,
    max_tokens: int,
    temperature: float,
    top_k: int,
    m: int,
    pad_id: int,
    max_len: int | None,
    generator: torch.Generator,
    device: torch.device | str,
) -> _RawSample:
    if prompt.ndim != 1 or len(prompt) == 0:
        raise ConfigError("a prompt must be at least one token long")
    if (prompt == pad_id).any():
        raise ValueError("a prompt must not contain the padding id")
    tokens = list(prompt.tolist())
    neighbours: list[np.ndarray] = []  # (k, 2m) per completed chunk
    record = _RawSample(prompt, [], [])

    def retrieve_chunks(first: int, count: int) -> None:
        if retrieve is None:
            return
        chunks = np.asarray(tokens[first * m : (first + count) * m], dtype=np.int64)
        chunks = chunks.reshape(count, m)
        found, ids = retrieve(chunks)
        found, ids = np.asarray(found), np.asarray(ids)
        if found.ndim != 3 or found.shape[0] != count or ids.shape != found.shape[:2]:
            raise ValueError(
                f"retrieve returned neighbours {found.shape} and ids {ids.shape} for "
                f"{count} chunks; expected (c, k, 2m) and (c, k)"
            )
        for u in range(count):
            neighbours.append(found[u].astype(np.int64))
            in_prompt = (first + u + 1) * m <= len(prompt)
            record.retrievals.append(_RawRetrieval(first + u, in_prompt, chunks[u], ids[u]))

    complete = len(tokens) // m
    if complete:
        retrieve_chunks(0, complete)
    for step in range(max_tokens):
        start = 0
        if max_len is not None and len(tokens) > max_len:
            start = -(-(len(tokens) - max_len) // m) * m  # chunk-aligned window that fits
        window = torch.tensor(tokens[start:], dtype=torch.long, device=device)[None]
        done = len(neighbours) - start // m  # completed chunks inside the window
        retrieved = None
        if done > 0:
            stacked = np.stack(neighbours[start // m :])
            retrieved = torch.from_numpy(stacked).to(device)[None]  # (1, done, k, 2m)
        logits = model(window, retrieved, return_loss=False)[0, -1].float().cpu()
        token = _pick(logits, temperature, top_k, pad_id, generator)
        tokens.append(token)
        record.generated.append(token)
        if len(tokens) % m == 0 and step < max_tokens - 1:
            retrieve_chunks(len(tokens) // m - 1, 1)
    return record


def _pick(
    logits: torch.Tensor, temperature: float, top_k: int, pad_id: int, generator: torch.Generator
) -> int:
    """The next token from ``(vocab,)`` logits: greedy at temperature 0, else sampled among the
    ``top_k`` likeliest (all when 0); never padding."""
    logits = logits.clone()
    if 0 <= pad_id < logits.shape[0]:
        logits[pad_id] = -torch.inf
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if 0 < top_k < logits.shape[0]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


# ---------------------------------------------------------------------------------------------
# the artifact


def samples_markdown(samples: Sequence[Sample], *, snippet: int = 80) -> str:
    """The samples as a Markdown document: each prompt and continuation in a fenced block, then
    a table of the retrievals (completed chunk, its start, each neighbour's document and text)."""
    lines = ["# Sample generations", ""]
    if not samples:
        lines.append("No samples were generated.")
    for number, sample in enumerate(samples, start=1):
        lines += [f"## Sample {number}", "", "Prompt:", "", *_fenced(sample.prompt), ""]
        lines += ["Generated:", "", *_fenced(sample.text), ""]
        if not sample.retrievals:
            lines += ["No chunk was completed, so nothing was retrieved.", ""]
            continue
        lines += [
            "| chunk | from | chunk text | neighbour | document | neighbour text |",
            "|---:|---|---|---:|---|---|",
        ]
        for retrieval in sample.retrievals:
            where = "prompt" if retrieval.in_prompt else "generated"
            query = _cell(retrieval.query, snippet)
            if not retrieval.neighbours:
                lines.append(f"| {retrieval.chunk} | {where} | {query} | none | | |")
            for neighbour in retrieval.neighbours:
                document = _cell(neighbour.document or "?", snippet)
                if neighbour.position is not None:
                    document += f" (chunk {neighbour.position})"
                lines.append(
                    f"| {retrieval.chunk} | {where} | {query} | {neighbour.chunk_id} | "
                    f"{document} | {_cell(neighbour.text or '', snippet)} |"
                )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _fenced(text: str) -> list[str]:
    # a fence longer than any backtick run inside, so the text cannot close it
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text, fence]


def _cell(text: str, limit: int) -> str:
    """One line of table-safe text, shortened to ``limit`` characters."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`") or " "
