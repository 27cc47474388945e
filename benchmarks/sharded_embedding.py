"""Sharded embedding (issue 16): one process against two ``--shard`` processes, MiniLM, 2 cores.

    python benchmarks/sharded_embedding.py [--quick] [--chunks N] [--repeats N] [--json PATH]

The same ingested corpus (python standard-library sources, 256-byte chunks: about 64 MiniLM
tokens each) is embedded with the ``sentence-transformers`` embedder (all-MiniLM-L6-v2, fp32)
in fresh copies of one store, each configuration in processes of its own:

- ``1 process, 2 workers x 1 thread``: the embedder's default on 2 cores (its own worker
  processes, one thread each);
- ``1 process, 1 worker x 2 threads``: one process, torch's threads on both cores;
- ``1 process, 1 worker x 1 thread``: one core, the reference for byte equality;
- ``2 shards x 1 worker x 1 thread``: ``embed_corpus(shard=Shard(i, 2))`` in two processes at
  once (what ``retro-platform index --shard i/2`` runs), the last one merging.

Reported: the embedding phase's wall time (from the first process's start of embedding to the
last one's end, the merge included; model loading and Python start-up excluded and shown
apart), chunks/s, and whether the vectors equal the one-thread reference byte for byte (the
sharded run must: it embeds the same batches with the same runtime options). Writes JSON to
``benchmarks/results/sharded_embedding.json``. On a machine shared with other jobs the figures
move between runs; the table gives the median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results" / "sharded_embedding.json"

#: (label, processes, embedder workers, threads per worker)
CONFIGS = (
    ("1 process, 2 workers x 1 thread", 1, 2, 1),
    ("1 process, 1 worker x 2 threads", 1, 1, 2),
    ("1 process, 1 worker x 1 thread", 1, 1, 1),
    ("2 shards x 1 worker x 1 thread", 2, 1, 1),
)
REFERENCE = "1 process, 1 worker x 1 thread"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,048 chunks, 1 repeat")
    parser.add_argument("--chunks", type=int, default=None, help="chunks (default 4,096)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per configuration")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument("--worker", nargs=4, metavar=("STORE", "SHARD", "WORKERS", "THREADS"))
    args = parser.parse_args(argv)
    args.chunks = args.chunks or (2048 if args.quick else 4096)
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


# --- one process of a configuration ----------------------------------------------------------


def worker(experiment_file: str, shard_text: str, workers: str, threads: str) -> None:
    """Embed (a shard of) the store's corpus; print the timings as one JSON line."""
    started = time.time()
    import torch

    torch.set_num_threads(int(threads))
    from retro_platform.cli.common import open_experiment
    from retro_platform.corpus.ingest import find_corpus_id
    from retro_platform.embeddings.embed import embed_corpus
    from retro_platform.store.shards import Shard

    experiment, store = open_experiment(
        experiment_file, (f"embedder.workers={workers}",), read_only=False
    )
    embedder = experiment.plugin_table("embedder").build()
    # load the model (and start the embedder's worker processes) before the clock starts
    embedder.embed(["warm up"] * 256)
    corpus_id = find_corpus_id(experiment, store)
    shard = None if shard_text == "-" else Shard.parse(shard_text)
    begin = time.time()
    result = embed_corpus(experiment, store, corpus_id, embedder=embedder, shard=shard)
    end = time.time()
    embedder.close()
    print(json.dumps({"start": started, "begin": begin, "end": end, "kind": type(result).__name__}))


# --- the configurations ------------------------------------------------------------------------


def prepare(work: Path, chunks: int) -> Path:
    """An experiment whose store holds at least ``chunks`` ingested chunks; its file."""
    corpus = work / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for source in sorted(stdlib.glob("*.py")):
        text = source.read_bytes()
        (corpus / source.name).write_bytes(text)
        total += len(text) // 256 + 1
        if total >= chunks:
            break
    experiment = work / "base" / "experiment.toml"
    experiment.parent.mkdir()
    experiment.write_text(
        "[experiment]\nname = 'sharded-embedding'\n"
        "[store]\npath = 'store'\n"
        f"[corpus]\nname = 'text-files'\npath = '{corpus}'\ninclude = ['*.py']\n"
        "[tokenizer]\nname = 'bytes'\n"
        "[retrieval]\nchunk_size = 256\nneighbours = 2\n"
        "[embedder]\nname = 'sentence-transformers'\n"
        "[retriever]\nname = 'faiss-flat'\n"
    )
    run([sys.executable, "-m", "retro_platform.cli", "ingest", str(experiment), "--no-progress"])
    return experiment


def run(command: list[str], **env: str) -> str:
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def measure(base: Path, work: Path, label: str, processes: int, workers: int, threads: int):
    """One run of a configuration in a fresh copy of the store; its timings and vectors."""
    folder = work / label.replace(" ", "_").replace(",", "")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(base.parent, folder)
    experiment = folder / "experiment.toml"
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    shards = ["-"] if processes == 1 else [f"{i}/{processes}" for i in range(processes)]
    started = time.time()
    running = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(experiment),
                shard,
                str(workers),
                str(threads),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for shard in shards
    ]
    reports = []
    for process in running:
        out, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{label} failed:\n{err[-2000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    finished = time.time()
    vectors = sorted((folder / "store" / "embeddings").glob("*[0-9a-f].npy"))
    return {
        "embed_s": max(r["end"] for r in reports) - min(r["begin"] for r in reports),
        "total_s": finished - started,
        "startup_s": max(r["begin"] - r["start"] for r in reports),
        "results": [r["kind"] for r in reports],
    }, vectors[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    import numpy as np

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sharded-embedding-") as temporary:
        work = Path(temporary)
        base = prepare(work, args.chunks)
        rows: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in CONFIGS}
        files: dict[str, Path] = {}
        for repeat in range(args.repeats):  # interleaved: each repeat runs every configuration
            for label, processes, workers, threads in CONFIGS:
                timing, vectors = measure(
                    base, work / f"r{repeat}", label, processes, workers, threads
                )
                rows[label].append(timing)
                files[label] = vectors
                print(f"repeat {repeat + 1}: {label}: {timing['embed_s']:.1f} s", flush=True)
        reference = np.load(files[REFERENCE])
        count = len(reference)
        table = []
        for label, *_ in CONFIGS:
            vectors = np.load(files[label])
            embed_s = statistics.median(r["embed_s"] for r in rows[label])
            table.append(
                {
                    "configuration": label,
                    "chunks": count,
                    "embed_s": embed_s,
                    "chunks_per_s": count / embed_s,
                    "startup_s": statistics.median(r["startup_s"] for r in rows[label]),
                    "total_s": statistics.median(r["total_s"] for r in rows[label]),
                    "identical_to_reference": bool(np.array_equal(vectors, reference)),
                    "max_abs_difference": float(np.abs(vectors - reference).max()),
                    "runs": rows[label],
                }
            )
    load = {"before": load_before, "after": os.getloadavg(), "cores": os.cpu_count()}
    one = next(row for row in table if row["configuration"] == REFERENCE)["embed_s"]
    print(f"\n{count} chunks of 256 bytes, all-MiniLM-L6-v2 fp32, medians of {args.repeats}")
    print(
        f"load average before {load['before'][0]:.1f}, after {load['after'][0]:.1f} "
        f"on {load['cores']} cores (other jobs slow every configuration alike)"
    )
    header = ("configuration", "embed s", "chunks/s", "vs 1 thread", "start-up s", "bytes equal")
    print(
        f"{header[0]:34} {header[1]:>8} {header[2]:>9} {header[3]:>11} {header[4]:>11} {header[5]:>12}"
    )
    for row in table:
        equal = row["identical_to_reference"]
        same = "yes" if equal else f"no ({row['max_abs_difference']:.1e})"
        print(
            f"{row['configuration']:34} {row['embed_s']:8.1f} {row['chunks_per_s']:9.1f} "
            f"{one / row['embed_s']:10.2f}x {row['startup_s']:11.1f} {same:>12}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"quick": args.quick, "repeats": args.repeats, "load": load, "table": table},
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
