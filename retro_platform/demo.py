"""``retro-platform demo``: a few minutes of real RETRO training on the standard library.

A stand-in for ``retro-platform run`` until the retrieval store and the runner exist: it reads
the interpreter's own ``.py`` files as bytes, cuts them into chunks, finds each chunk's nearest
neighbours in *other* files by cosine similarity of hashed byte-trigram counts (a deliberately
simple retriever that needs no model), trains a small RETRO, and compares held-out loss with
retrieval on and off.
"""

from __future__ import annotations

import random
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from retro_platform.errors import ConfigError
from retro_platform.model import RETRO

PAD = 0  # byte b is token b + 1, so id 0 stays free for padding


@dataclass
class DemoCorpus:
    tokens: torch.Tensor  # (chunks, m): every chunk of every file, in file order
    documents: torch.Tensor  # (chunks,): which file each chunk came from
    neighbours: torch.Tensor  # (chunks, k, 2m): each chunk's neighbours plus continuations


def stdlib_files(limit: int, seed: int) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 2000)
    if not files:
        raise ConfigError(f"found no standard-library sources under {root}")
    random.Random(seed).shuffle(files)
    return files[:limit]


def chunk_files(files: list[Path], m: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunks, documents = [], []
    for doc, path in enumerate(files):
        data = torch.tensor(list(path.read_bytes()), dtype=torch.long) + 1
        usable = len(data) // m * m
        chunks.append(data[:usable].view(-1, m))
        documents.append(torch.full((usable // m,), doc))
    return torch.cat(chunks), torch.cat(documents)


def trigram_embeddings(tokens: torch.Tensor, buckets: int = 4096) -> torch.Tensor:
    """Unit-length hashed counts of byte trigrams, one row per chunk."""
    t = tokens
    hashed = (t[:, :-2] * 65599 + t[:, 1:-1] * 257 + t[:, 2:]) % buckets
    counts = torch.zeros(len(tokens), buckets).scatter_add_(
        1, hashed, torch.ones_like(hashed, dtype=torch.float)
    )
    return F.normalize(counts, dim=-1)


def retrieve(tokens: torch.Tensor, documents: torch.Tensor, k: int) -> torch.Tensor:
    """Each chunk's k nearest chunks of other files, each with its continuation."""
    vectors = trigram_embeddings(tokens)
    nearest = []
    for block in torch.split(torch.arange(len(tokens)), 2048):  # bounded memory
        scores = vectors[block] @ vectors.T
        scores[documents[block, None] == documents[None, :]] = -2.0  # never the same file
        nearest.append(scores.topk(k, dim=-1).indices)
    nearest = torch.cat(nearest)  # (chunks, k)
    # the continuation is the next chunk of the same file, padding at the end of a file
    following = torch.cat([tokens[1:], torch.zeros_like(tokens[:1])])
    same_file = torch.cat([documents[1:] == documents[:-1], torch.tensor([False])])
    following[~same_file] = PAD
    return torch.cat([tokens[nearest], following[nearest]], dim=-1)


def build_corpus(files: list[Path], m: int, k: int) -> DemoCorpus:
    tokens, documents = chunk_files(files, m)
    return DemoCorpus(tokens, documents, retrieve(tokens, documents, k))


def batches(corpus: DemoCorpus, chunks_per_seq: int, docs: set[int], batch: int, seed: int):
    """Random windows of ``chunks_per_seq`` chunks inside one file, with their neighbours."""
    starts = [
        i
        for i in range(len(corpus.tokens) - chunks_per_seq)
        if int(corpus.documents[i]) in docs
        and corpus.documents[i] == corpus.documents[i + chunks_per_seq]
    ]
    rng = random.Random(seed)
    while True:
        picked = rng.sample(starts, batch)
        seq = torch.stack([corpus.tokens[s : s + chunks_per_seq + 1].flatten() for s in picked])
        retrieved = torch.stack([corpus.neighbours[s : s + chunks_per_seq] for s in picked])
        yield seq[:, : chunks_per_seq * corpus.tokens.shape[1] + 1], retrieved


def run_demo(*, files: int, steps: int, seed: int, echo=print) -> dict[str, float]:
    torch.manual_seed(seed)
    m, k, chunks_per_seq = 64, 2, 4
    started = time.perf_counter()
    corpus = build_corpus(stdlib_files(files, seed), m, k)
    num_docs = int(corpus.documents.max()) + 1
    held_out = set(range(max(1, num_docs // 10)))
    training = set(range(len(held_out), num_docs))
    echo(f"corpus: {num_docs} standard-library files, {len(corpus.tokens):,} chunks of {m} bytes, "
         f"{k} neighbours each from other files")  # fmt: skip

    model = RETRO(num_tokens=257, max_seq_len=chunks_per_seq * m, enc_dim=128, enc_depth=1,
                  dec_dim=192, dec_depth=4, dec_cross_attn_layers=(2, 4), heads=4, dim_head=48,
                  chunk_size=m, pad_id=PAD)  # fmt: skip
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    train = batches(corpus, chunks_per_seq, training, batch=8, seed=seed)
    progress = tqdm(range(steps), desc="training", unit="step")
    for _ in progress:
        seq, retrieved = next(train)
        loss = model(seq, retrieved, return_loss=True)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")

    model.eval()
    evaluation = batches(corpus, chunks_per_seq, held_out, batch=8, seed=seed + 1)
    on = off = 0.0
    with torch.no_grad():
        for _ in range(4):
            seq, retrieved = next(evaluation)
            on += model(seq, retrieved, return_loss=True).item() / 4
            off += model(seq, None, return_loss=True).item() / 4
    result = {"eval_loss_retrieval_on": on, "eval_loss_retrieval_off": off,
              "seconds": time.perf_counter() - started}  # fmt: skip
    echo(f"held-out loss (nats/byte): retrieval on {on:.3f}, off {off:.3f}; "
         f"{result['seconds']:.0f} s in all")  # fmt: skip
    return result
