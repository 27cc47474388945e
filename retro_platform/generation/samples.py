"""Generations as records with their sources, and the run's ``samples.md`` artifact."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from retro_platform.generation.decoding import Generation, Retrieve, generate, generated_text
from retro_platform.generation.retrieval import Neighbour
from retro_platform.generation.sampling import SamplingSettings


@dataclass(frozen=True)
class Retrieval:
    """One autoretrieval as shown: the completed chunk ``chunk`` (its index in the text), its
    text, and what it retrieved, nearest first."""

    chunk: int
    in_prompt: bool
    query: str
    neighbours: tuple[Neighbour, ...]


@dataclass(frozen=True)
class Sample:
    """One generation: prompt and continuation as text and ids, and every retrieval made."""

    prompt: str
    text: str
    prompt_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]
    retrievals: tuple[Retrieval, ...] = field(default_factory=tuple)
    finish: str = "length"

    def as_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "text": self.text,
            "prompt_tokens": len(self.prompt_ids),
            "generated_tokens": len(self.generated_ids),
            "finish": self.finish,
            "sources": [
                {
                    "chunk": r.chunk,
                    "from": "prompt" if r.in_prompt else "generated",
                    "query": r.query,
                    "neighbours": [
                        {
                            "chunk_id": n.chunk_id,
                            "document": n.document,
                            "position": n.position,
                            "score": n.score if math.isfinite(n.score) else None,
                            "text": n.text,
                        }
                        for n in r.neighbours
                    ],
                }
                for r in self.retrievals
            ],
        }


def generate_samples(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    retrieve: Retrieve | None,
    settings: SamplingSettings,
    *,
    pad_id: int,
    decode: Callable[[Sequence[int]], str],
    describe: Callable[[np.ndarray, np.ndarray], list[Neighbour]] | None = None,
    device: Any = "cpu",
    on_token: Callable[[int, int], None] | None = None,
) -> list[Sample]:
    """:func:`~retro_platform.generation.decoding.generate`, then each retrieval described
    (``describe``: a retrieval's ``described``, which reads the chunks' documents and texts)."""
    generations = generate(
        model,
        prompts,
        retrieve,
        settings,
        pad_id=pad_id,
        decode=decode,
        on_token=on_token,
        device=device,
    )
    return [as_sample(g, settings, decode, describe) for g in generations]


def as_sample(
    generation: Generation,
    settings: SamplingSettings,
    decode: Callable[[Sequence[int]], str],
    describe: Callable[[np.ndarray, np.ndarray], list[Neighbour]] | None,
) -> Sample:
    retrievals = []
    for r in generation.retrievals:
        ids, scores = np.asarray(r.ids, np.int64), np.asarray(r.scores, np.float32)
        if describe is not None:
            neighbours = describe(ids, scores)
        else:
            neighbours = [
                Neighbour(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if i >= 0
            ]
        retrievals.append(Retrieval(r.chunk, r.in_prompt, decode(r.query_ids), tuple(neighbours)))
    return Sample(
        prompt=decode(generation.prompt_ids),
        text=generated_text(generation, decode, settings.stop),
        prompt_ids=tuple(generation.prompt_ids),
        generated_ids=tuple(generation.generated_ids),
        retrievals=tuple(retrievals),
        finish=generation.finish,
    )


# ---------------------------------------------------------------------------------------------
# the artifact


def samples_markdown(samples: Sequence[Sample], *, snippet: int = 80) -> str:
    """The samples as a Markdown document: each prompt and continuation in a fenced block, then
    a table of the retrievals (completed chunk, its text, each neighbour's document, chunk
    position, score and text)."""
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
            "| chunk | from | chunk text | neighbour | score | document | neighbour text |",
            "|---:|---|---|---:|---:|---|---|",
        ]
        for retrieval in sample.retrievals:
            where = "prompt" if retrieval.in_prompt else "generated"
            query = _cell(retrieval.query, snippet)
            if not retrieval.neighbours:
                lines.append(f"| {retrieval.chunk} | {where} | {query} | none | | | |")
            for neighbour in retrieval.neighbours:
                document = _cell(neighbour.document or "?", snippet)
                if neighbour.position is not None:
                    document += f" (chunk {neighbour.position})"
                score = f"{neighbour.score:.3f}" if math.isfinite(neighbour.score) else ""
                lines.append(
                    f"| {retrieval.chunk} | {where} | {query} | {neighbour.chunk_id} | {score} | "
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
