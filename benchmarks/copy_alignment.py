"""Why neighbours are lined up: can a small RETRO copy from a neighbour off the chunk grid?

    python benchmarks/copy_alignment.py [--steps N] [--experiment PATH] [--json PATH]

Two measurements, one table each:

1. A copy task only retrieval can solve (random tokens; each chunk's first neighbour holds the
   text around the next chunk, the second is noise), trained from scratch with the same
   recipe twice: once with the neighbour cut on the chunk grid (the next chunk sits at the
   neighbour's positions m ... 2m - 1, as when a copy starts on the grid) and once starting at
   a random offset of up to m - 1 tokens before the chunk (as copies between real documents
   do). It prints the loss on the chunks a neighbour could supply, every 100 steps, against
   chance (ln V).
2. On an experiment's validation chunks (default ``examples/quickstart.toml``, indexed first
   with ``retro-platform index``): the share of a chunk's tokens that stand at the same place
   in the continuation of one of the neighbours of the chunk before it, with neighbours cut on
   the grid and lined up (``retro_platform.neighbours.aligned``).

README ("Does retrieval help?") and docs/runs.md ("Aligned neighbours") quote both.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from _common import REPO_ROOT, ensure_repo_on_path, markdown_table

ensure_repo_on_path()

VOCAB, M, CHUNKS, BATCH = 256, 16, 4, 16


def copy_batch(generator: torch.Generator, offset: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences ``(BATCH, CHUNKS * M + 1)`` and neighbours ``(BATCH, CHUNKS, 2, 2M)``: chunk
    ``u``'s first neighbour is ``2M`` tokens of the stream from ``u * M - s``, ``s`` in
    ``[0, M)`` at random (``offset``) or 0."""
    lead = M  # stream tokens before the sequence, so that a neighbour may start before it
    stream = torch.randint(1, VOCAB, (BATCH, lead + (CHUNKS + 2) * M), generator=generator)
    windows = []
    for u in range(CHUNKS):
        shift = torch.randint(0, M, (BATCH,), generator=generator) if offset else None
        start = lead + u * M - (shift if shift is not None else torch.zeros(BATCH, dtype=int))
        index = start[:, None] + torch.arange(2 * M)[None, :]
        windows.append(torch.gather(stream, 1, index))
    useful = torch.stack(windows, dim=1)
    noise = torch.randint(1, VOCAB, (BATCH, CHUNKS, 2 * M), generator=generator)
    return stream[:, lead : lead + CHUNKS * M + 1], torch.stack([useful, noise], dim=2)


def train_copy_task(offset: bool, steps: int) -> list[tuple[int, float]]:
    """Loss (nats) on chunks 1.. every 100 steps, on fresh batches."""
    from retro_platform import RETRO

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = RETRO(
        num_tokens=VOCAB,
        max_seq_len=CHUNKS * M,
        enc_dim=64,
        enc_depth=2,
        dec_depth=2,
        dec_cross_attn_layers=(1, 2),
        heads=4,
        dec_dim=64,
        dim_head=32,
        chunk_size=M,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    curve = []
    for step in range(1, steps + 1):
        seq, retrieved = copy_batch(generator, offset)
        loss = model(seq, retrieved, return_loss=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            model.eval()
            seq, retrieved = copy_batch(generator, offset)
            with torch.no_grad():
                logits = model(seq[:, :-1], retrieved)
            losses = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), seq[:, 1:], reduction="none"
            ).view(BATCH, CHUNKS, M)
            curve.append((step, losses[:, 1:].mean().item()))
            model.train()
            print(f"{'offset' if offset else 'grid'} step {step}: {curve[-1][1]:.3f}", flush=True)
    return curve


def same_place_shares(experiment_path: Path) -> dict[str, float]:
    """Share of validation chunk tokens found at the same place in a conditioning neighbour's
    continuation: neighbours on the chunk grid, and lined up."""
    from retro_platform.cli.common import open_experiment
    from retro_platform.corpus.chunk_table import load_chunk_table, validation_documents
    from retro_platform.corpus.ingest import find_corpus_id
    from retro_platform.neighbours.aligned import TokenStream, alignment_offsets
    from retro_platform.neighbours.retrieved import load_chunk_tokens
    from retro_platform.pipeline import run_index

    experiment, store = open_experiment(str(experiment_path))
    corpus_id = find_corpus_id(experiment, store)
    result = run_index(experiment, store, progress=False, log=lambda _: None)
    m = experiment.retrieval.chunk_size
    with store.session() as session:
        table = load_chunk_table(session, corpus_id)
        tokens = load_chunk_tokens(session, corpus_id, m, 0)
        held_out = validation_documents(
            session, corpus_id, experiment.retrieval.validation_fraction
        )
    pad = 0  # every tokenizer of ours pads with 0
    neighbours = table.rows_of(np.asarray(result.neighbours.open()))
    stream = TokenStream.build(table, tokens, pad)
    following = table.continuation_rows()
    rows = np.flatnonzero(np.isin(table.document_ids, held_out) & (following >= 0))
    query, after = tokens[rows], tokens[following[rows]]
    offsets = {
        "on the chunk grid": np.zeros((len(rows), neighbours.shape[1]), dtype=np.int64),
        "lined up": alignment_offsets(stream, query, neighbours[rows], pad),
    }
    shares = {}
    for name, offset in offsets.items():
        windows = stream.windows(neighbours[rows], offset, 2 * m, pad)[..., m:]  # (q, k, m)
        found = ((windows == after[:, None, :]) & (after != pad)[:, None, :]).any(axis=1)
        shares[name] = float(found.sum() / (after != pad).sum())
    return shares


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="copy-task steps (default 800)")
    parser.add_argument(
        "--experiment",
        type=Path,
        default=REPO_ROOT / "examples" / "quickstart.toml",
        help="an indexed experiment whose validation chunks to measure",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the task is small: one thread, less noise from the other core
    started = time.perf_counter()
    variants = (("on the chunk grid", False), ("at a random offset", True))
    curves = {name: train_copy_task(offset, args.steps) for name, offset in variants}
    chance = math.log(VOCAB)
    steps = [step for step, _ in curves["on the chunk grid"]]
    rows = [
        [str(step), *(f"{dict(curve)[step]:.3f}" for curve in curves.values())] for step in steps
    ]
    print(
        f"\n## Copy task: loss on the chunks a neighbour can supply (chance: {chance:.2f} nats)\n"
    )
    print(markdown_table(["step", *curves], rows))
    shares = same_place_shares(args.experiment)
    print(f"\n## {args.experiment.name}: validation tokens at the same place in a neighbour\n")
    table = [[name, f"{share:.1%}"] for name, share in shares.items()]
    print(markdown_table(["neighbours", "share of tokens"], table))
    print(f"\nwall time: {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"chance": chance, "curves": curves, "shares": shares}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
