"""Retrieval-store benchmark (issue 3): search, recall, embedding, ingest + index, in one run.

    python benchmarks/retrieval.py [--quick] [--only 1,2,3,4,5] [--datasets stdlib,synthetic]
                                   [--repeats N] [--json out.json] [--keep DIR]

1. Search through our retriever plugins vs raw Faiss on the same index file and queries
   (queries/s at k = 2 and k = 10; faiss-flat, faiss-ivfpq, faiss-hnsw at default options) on
   the python-stdlib corpus's MiniLM embeddings and on synthetic clustered vectors (1M).
2. Recall@2 / recall@10 of faiss-ivfpq and faiss-hnsw against faiss-flat (tie-aware), with
   build time, index file size and RSS growth.
3. Embedding throughput: our sentence-transformers plugin vs ``SentenceTransformer.encode``
   called directly with the plugin's model, batch size and precision; plain fp32 ``encode``;
   the hashing embedder; recall@10 of the plugin's default vectors against fp32 vectors.
4. ``ingest`` + ``index`` of the whole python-stdlib corpus with MiniLM through the real CLI,
   wall time and peak RSS per stage.
5. Peak RSS of ingesting 1M chunks (synthetic JSON Lines, bytes tokenizer), at two corpus
   sizes, and of the index stage's embedding part with the hashing embedder.

Every measurement whose memory matters runs in a process of its own: the CLI stages (4, 5) are
watched from outside (``_tasks.run_watched``: ``VmHWM`` of ``/proc/PID/status``, polled), the
index and embedding measurements (1-3) are tasks that ``_tasks.TaskRunner`` runs in fresh
processes of this script. Items 1-3 reuse the MiniLM embeddings and chunk texts of item 4's
store. See ``benchmarks/README.md``.

The script reads top-down: the sizes and options, what is run (the CLI stages and the tasks, in
order), the tasks (what one worker measures), the tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from _common import (
    cpu_model,
    current_rss_bytes,
    ensure_repo_on_path,
    fmt_number,
    fmt_ratio,
    fmt_seconds,
    format_bytes,
    log,
    markdown_table,
    median,
    peak_rss_bytes,
    process_tree_cpu_seconds,
)
from _tasks import (
    TaskRunner,
    Worker,
    add_worker_arguments,
    child_env,
    log_tail,
    run_watched,
    serve,
)

SEED = 0
ITEMS = (1, 2, 3, 4, 5)
DATASETS = ("stdlib", "synthetic")
RETRIEVERS = ("faiss-flat", "faiss-ivfpq", "faiss-hnsw")
KS = (2, 10)

#: A retrieved chunk counts as a hit when its exact score is within this of the k-th exact
#: score (scores recomputed in float64, so only true ties and near-ties are forgiven).
TIE_EPSILON = 1e-5

#: A timed search repeats the same call until it has run at least this long (per timing).
MIN_TIMED_S = 1.0

#: A search call slower than this (flat over 1M vectors) is timed SLOW_REPEATS times at most.
SLOW_CALL_S = 5.0
SLOW_REPEATS = 3

#: Item 3 embeds its texts this many at a time, every variant in turn, so that a burst of
#: other work on the machine lands on all of them alike.
EMBED_SLICE = 500

#: The issue's targets.
TARGET_SEARCH_RATIO = 0.9
TARGET_RECALL = {"faiss-hnsw": 0.95, "faiss-ivfpq": 0.90}
TARGET_EMBED_RATIO = 0.95
TARGET_EMBED_RECALL = 0.95
TARGET_PIPELINE_S = 600.0
TARGET_INGEST_RSS = 2 * 10**9

#: Synthetic vectors: a two-level Gaussian mixture on the unit sphere (see synthetic_task).
SYNTHETIC_DIM = 384
SYNTHETIC_CLUSTERS = 1024
SYNTHETIC_SUBCLUSTERS = 16
SYNTHETIC_SUB_NOISE = 0.8
SYNTHETIC_POINT_NOISE = 0.8

#: Item 5: documents of this many chunks of CHUNK_BYTES bytes (bytes tokenizer: 1 token/byte).
INGEST_CHUNKS_PER_DOC = 64
INGEST_CHUNK_BYTES = 64


@dataclass(frozen=True)
class Sizes:
    stdlib_max_files: int | None  # None: the whole library
    stdlib_queries: int  # held-out chunks used as queries (items 1-2)
    synthetic_vectors: int
    synthetic_queries: int
    embed_texts: int  # item 3: chunk texts embedded per timed run
    embed_queries: int  # item 3: of which are queries for the recall check
    ingest_chunks: tuple[int, ...]  # item 5: corpus sizes; the index stage runs on the last


FULL = Sizes(None, 1000, 1_000_000, 1000, 2000, 250, (100_000, 1_000_000))
QUICK = Sizes(20, 200, 20_000, 200, 256, 64, (2_000, 20_000))


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: a smoke test")
    parser.add_argument("--only", default="1,2,3,4,5", help="items to run, e.g. 1,2 (default all)")
    parser.add_argument(
        "--datasets",
        default="stdlib,synthetic",
        help="vector sets of items 1-2 (default stdlib,synthetic)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per measurement (5 for searches and 3 for embedding; 1 with --quick)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write everything as JSON")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="work in this folder and keep it (default: a temporary folder, removed); "
        "a kept stdlib store is reused by items 1-3 when item 4 is not run",
    )
    parser.add_argument(
        "--vectors",
        type=int,
        default=None,
        help="synthetic vectors of items 1-2 (1,000,000; 20,000 with --quick)",
    )
    parser.add_argument("--mem-limit-gb", type=float, default=16.0, help="per worker (16)")
    parser.add_argument(
        "--timeout-s", type=float, default=7200.0, help="per worker or CLI stage (7200)"
    )
    add_worker_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.items = sorted({int(item) for item in args.only.split(",") if item.strip()})
    except ValueError:
        parser.error(f"--only takes item numbers 1-5 separated by commas, got {args.only!r}")
    if not args.items or set(args.items) - set(ITEMS):
        parser.error(f"--only takes item numbers 1-5 separated by commas, got {args.only!r}")
    args.datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    if not args.datasets or set(args.datasets) - set(DATASETS):
        parser.error(f"--datasets takes stdlib and/or synthetic, got {','.join(args.datasets)!r}")
    if args.vectors is not None and args.vectors < 1000:
        parser.error("--vectors must be at least 1000 (faiss-ivfpq trains on them)")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.search_repeats = args.repeats or (1 if args.quick else 5)
    args.embed_repeats = args.repeats or (1 if args.quick else 3)
    return args


# ---------------------------------------------------------------------------------------------
# what is run: items 4, 3, 1 and 2, 5
# ---------------------------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    if args.vectors is not None:
        sizes = replace(sizes, synthetic_vectors=args.vectors)
    items = set(args.items)
    command = "python benchmarks/retrieval.py " + " ".join(
        shlex.quote(arg) for arg in (args.argv or [])
    )
    results: dict[str, Any] = {
        "command": command.strip(),
        "quick": args.quick,
        "items": sorted(items),
        "repeats": {"search": args.search_repeats, "embedding": args.embed_repeats},
        "sizes": asdict(sizes),
        "machine": machine_facts(),
        "load_average": [os.getloadavg()[0]],
        "notes": [],
    }
    runner = TaskRunner(
        __file__, timeout_s=args.timeout_s, mem_limit_gb=args.mem_limit_gb, scratch=work / "workers"
    )
    stdlib_folder = work / "stdlib"

    needs_store = bool(items & {1, 2}) and "stdlib" in args.datasets or 3 in items
    embeddings: Path | None = None
    if 4 in items:
        results["pipeline"] = run_stdlib_pipeline(stdlib_folder, sizes, args.timeout_s)
        embeddings = finished_stdlib_store(stdlib_folder)
    elif needs_store:
        embeddings = finished_stdlib_store(stdlib_folder)
        if embeddings is None:
            log("items 1-3 need item 4's store: running ingest + index first (not reported)")
            run_stdlib_pipeline(stdlib_folder, sizes, args.timeout_s)
            embeddings = finished_stdlib_store(stdlib_folder)
            results["notes"].append("item 4's store was built first for items 1-3")
        else:
            results["notes"].append(f"items 1-3 reused the stdlib store in {stdlib_folder}")
    database = stdlib_folder / "store" / "retro.db"

    if 3 in items:
        if embeddings is None:
            results["embed"] = {"status": "error", "detail": "no finished stdlib store"}
        else:
            log(f"item 3: embedding {sizes.embed_texts:,} texts, {args.embed_repeats} runs each")
            results["embed"] = runner.run(
                {
                    "kind": "embed",
                    "database": str(database),
                    "texts": sizes.embed_texts,
                    "queries": sizes.embed_queries,
                    "repeats": args.embed_repeats,
                }
            )
            log(f"    {results['embed'].get('status')} {results['embed'].get('detail', '')}")

    if items & {1, 2}:
        datasets: dict[str, dict[str, Any]] = {}
        vectors_folder = work / "vectors"
        if "stdlib" in args.datasets:
            if embeddings is None:
                datasets["stdlib"] = {"status": "error", "detail": "no finished stdlib store"}
            else:
                datasets["stdlib"] = prepare_stdlib_vectors(
                    embeddings, vectors_folder, sizes.stdlib_queries
                )
        if "synthetic" in args.datasets:
            results["synthetic"] = prepare_synthetic_vectors(vectors_folder, sizes, runner)
            datasets["synthetic"] = results["synthetic"]
        results["index_results"] = run_index_measurements(
            datasets, work / "indexes", runner, args.search_repeats
        )

    if 5 in items:
        results["ingest_scale"] = run_ingest_scale(work / "ingest", sizes, args.timeout_s)

    results["load_average"].append(os.getloadavg()[0])
    results["wall_s"] = time.perf_counter() - started
    return results


# --- experiment files and the CLI --------------------------------------------------------------


def write_experiment(folder: Path, corpus: dict[str, Any], tokenizer: str, embedder: str) -> Path:
    def value(item: Any) -> str:
        return json.dumps(item)  # TOML strings and integers are JSON's

    corpus_lines = "\n".join(f"{key} = {value(item)}" for key, item in corpus.items())
    text = f"""# written by benchmarks/retrieval.py
[experiment]
name = "retrieval-benchmark"
seed = {SEED}

[store]
path = "store"

[corpus]
{corpus_lines}

[tokenizer]
name = "{tokenizer}"

[retrieval]
chunk_size = 64

[embedder]
name = "{embedder}"

[retriever]
name = "faiss-flat"
"""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.toml"
    path.write_text(text)
    return path


def run_cli(
    stage: str,
    experiment: Path,
    timeout_s: float,
    stop_when: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """``python -m retro_platform.cli STAGE EXPERIMENT`` in the experiment's folder, watched."""
    log_path = experiment.parent / f"{stage}.log"
    command = [sys.executable, "-m", "retro_platform.cli", stage, experiment.name]
    with open(log_path, "w") as log_file:
        watched = run_watched(
            command,
            cwd=experiment.parent,
            env=child_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            timeout_s=timeout_s,
            stop_when=stop_when,
        )
    status = "ok"
    detail = ""
    if watched.timed_out:
        status, detail = "timeout", f"timeout (> {timeout_s:g} s)"
    elif watched.returncode != 0 and not watched.stopped:
        status, detail = "error", f"exit {watched.returncode}: {log_tail(log_path)}"
    return {
        "stage": stage,
        "status": status,
        "detail": detail,
        "wall_s": watched.wall_s,
        "peak_rss": watched.peak_rss,
        "ru_maxrss": watched.ru_maxrss,
        "stopped": watched.stopped,
        "stopped_at_s": watched.stopped_at_s,
        "peak_rss_at_stop": watched.peak_rss_at_stop,
        "tree_peak_rss": watched.tree_peak_rss,
        "tree_peak_rss_at_stop": watched.tree_peak_rss_at_stop,
        "tree_processes": watched.tree_processes,
        "log": str(log_path),
    }


def query_store(database: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on a store's SQLite database ([] if it cannot be read)."""
    if not database.exists():
        return []
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
        try:
            return connection.execute(sql).fetchall()
        finally:
            connection.close()
    except sqlite3.Error:
        return []


def store_facts(database: Path) -> dict[str, Any]:
    """What the store recorded: counts and the seconds of each sub-stage of ``index``."""

    def one(sql: str) -> Any:
        rows = query_store(database, sql)
        return rows[0] if rows else None

    documents = one("SELECT count(*) FROM documents")
    chunks = one("SELECT count(*) FROM chunks")
    ingest = one("SELECT last_ingest FROM corpora ORDER BY id DESC LIMIT 1")
    embedding = one(
        "SELECT count, seconds, dimension, file, status, done FROM embedding_sets "
        "ORDER BY id DESC LIMIT 1"
    )
    index = one("SELECT count, seconds, retriever FROM vector_indexes ORDER BY id DESC LIMIT 1")
    neighbours = one("SELECT count, seconds, k FROM neighbour_sets ORDER BY id DESC LIMIT 1")
    facts: dict[str, Any] = {
        "documents": documents[0] if documents else None,
        "chunks": chunks[0] if chunks else None,
        "last_ingest": json.loads(ingest[0]) if ingest and ingest[0] else None,
    }
    if embedding:
        facts["embedding"] = dict(
            zip(("count", "seconds", "dimension", "file", "status", "done"), embedding, strict=True)
        )
    if index:
        facts["index"] = dict(zip(("count", "seconds", "retriever"), index, strict=True))
    if neighbours:
        facts["neighbours"] = dict(zip(("count", "seconds", "k"), neighbours, strict=True))
    return facts


# --- item 4: the whole python-stdlib corpus, end to end ----------------------------------------


def run_stdlib_pipeline(folder: Path, sizes: Sizes, timeout_s: float) -> dict[str, Any]:
    if folder.exists():
        shutil.rmtree(folder)  # our own folder from an earlier --keep run: start from nothing
    corpus: dict[str, Any] = {"name": "python-stdlib"}
    if sizes.stdlib_max_files is not None:
        corpus["max_files"] = sizes.stdlib_max_files
    experiment = write_experiment(folder, corpus, "pretrained", "sentence-transformers")
    log(f"item 4: ingest {experiment}")
    ingest = run_cli("ingest", experiment, timeout_s)
    log(f"item 4: ingest {ingest['status']} in {ingest['wall_s']:.0f} s; index (MiniLM, flat)")
    index = run_cli("index", experiment, timeout_s) if ingest["status"] == "ok" else None
    if index is not None:
        log(f"item 4: index {index['status']} in {index['wall_s']:.0f} s")
    return {
        "experiment": str(experiment),
        "ingest": ingest,
        "index": index,
        "store": store_facts(folder / "store" / "retro.db"),
    }


def finished_stdlib_store(folder: Path) -> Path | None:
    """The embeddings file of a finished stdlib store in ``folder`` (from a kept run), or None."""
    facts = store_facts(folder / "store" / "retro.db")
    embedding = facts.get("embedding")
    if not embedding or embedding["status"] != "ready":
        return None
    path = folder / "store" / embedding["file"]
    return path if path.exists() else None


# --- items 1 and 2 -----------------------------------------------------------------------------


def prepare_stdlib_vectors(embeddings: Path, folder: Path, queries: int) -> dict[str, Any]:
    """Hold out ``queries`` chunks (seeded) as queries; the rest is the database."""
    import numpy as np

    vectors = np.load(embeddings)
    rows = np.random.default_rng(SEED).choice(len(vectors), size=queries, replace=False)
    held_out = np.zeros(len(vectors), dtype=bool)
    held_out[rows] = True
    folder.mkdir(parents=True, exist_ok=True)
    db, query_path = folder / "stdlib-db.npy", folder / "stdlib-queries.npy"
    np.save(db, vectors[~held_out])
    np.save(query_path, vectors[np.sort(rows)])
    return {"db": str(db), "queries": str(query_path), "n": int((~held_out).sum())}


def prepare_synthetic_vectors(folder: Path, sizes: Sizes, runner: TaskRunner) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    n, q = sizes.synthetic_vectors, sizes.synthetic_queries
    db, query_path = folder / f"synthetic-{n}-db.npy", folder / f"synthetic-{n}-queries.npy"
    spec = {
        "n": n,
        "n_queries": q,
        "seed": SEED,
        "generator": [
            SYNTHETIC_DIM,
            SYNTHETIC_CLUSTERS,
            SYNTHETIC_SUBCLUSTERS,
            SYNTHETIC_SUB_NOISE,
            SYNTHETIC_POINT_NOISE,
        ],
    }
    meta = folder / f"synthetic-{n}.json"
    if (
        meta.exists()
        and db.exists()
        and query_path.exists()
        and json.loads(meta.read_text()) == spec
    ):
        return {"db": str(db), "queries": str(query_path), "n": n, "seconds": None, "reused": True}
    log(f"items 1-2: generating {n:,} synthetic vectors")
    result = runner.run(
        {"kind": "synthetic", "vectors": str(db), "queries": str(query_path), **spec}
    )
    if result.get("status") != "ok":
        return {"status": result.get("status"), "detail": result.get("detail")}
    meta.write_text(json.dumps(spec))
    return {"db": str(db), "queries": str(query_path), "n": n, "seconds": result["seconds"]}


def run_index_measurements(
    datasets: dict[str, dict[str, Any]], folder: Path, runner: TaskRunner, repeats: int
) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for dataset, data in datasets.items():
        if "db" not in data:
            for retriever in RETRIEVERS:
                results.append(
                    {
                        "dataset": dataset,
                        "retriever": retriever,
                        "status": data.get("status", "error"),
                        "detail": data.get("detail", "no vectors"),
                    }
                )
            continue
        gt_path = folder / f"{dataset}-exact-top{max(KS)}.npy"
        gt_path.unlink(missing_ok=True)
        for retriever in RETRIEVERS:  # flat first: it writes the exact neighbours
            log(f"items 1-2: {retriever} on {dataset} ({data['n']:,} vectors)")
            result = runner.run(
                {
                    "kind": "index",
                    "retriever": retriever,
                    "db": data["db"],
                    "queries": data["queries"],
                    "ks": list(KS),
                    "repeats": repeats,
                    "gt_path": str(gt_path),
                    "index_path": str(folder / f"{dataset}-{retriever}.index"),
                }
            )
            result.update(dataset=dataset, retriever=retriever)
            results.append(result)
            if result.get("status") == "ok":
                log(
                    f"    built in {result['build_s']:.1f} s; recall {result['recall']}; "
                    f"same results {result['same_results']}"
                )
            else:
                log(f"    {result.get('status')}: {result.get('detail')}")
            (folder / f"{dataset}-{retriever}.index").unlink(missing_ok=True)
    return results


# --- item 5: a million chunks ------------------------------------------------------------------


def write_synthetic_jsonl(path: Path, chunks: int) -> dict[str, Any]:
    """Documents of 64 chunks x 64 ASCII bytes (the last one shorter), deterministic text."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    words = [
        letters[rng.integers(0, 26, length)].tobytes().decode()
        for length in rng.integers(2, 11, 4096)
    ]
    pool = " ".join(words[i] for i in rng.integers(0, len(words), 800_000))  # ~5 MB
    doc_bytes = INGEST_CHUNKS_PER_DOC * INGEST_CHUNK_BYTES
    documents = math.ceil(chunks / INGEST_CHUNKS_PER_DOC)
    offsets = rng.integers(0, len(pool) - doc_bytes, documents)
    with open(path, "w", encoding="ascii") as out:
        for index, offset in enumerate(offsets):
            size = min(doc_bytes, (chunks - index * INGEST_CHUNKS_PER_DOC) * INGEST_CHUNK_BYTES)
            text = pool[offset : offset + size]
            out.write(json.dumps({"id": f"doc-{index:07d}", "text": text}) + "\n")
    return {"documents": documents, "bytes": path.stat().st_size}


def run_ingest_scale(folder: Path, sizes: Sizes, timeout_s: float) -> list[dict[str, Any]]:
    rows = []
    for position, chunks in enumerate(sizes.ingest_chunks):
        sub = folder / f"jsonl-{chunks}"
        if sub.exists():
            shutil.rmtree(sub)
        sub.mkdir(parents=True)
        started = time.perf_counter()
        corpus = write_synthetic_jsonl(sub / "corpus.jsonl", chunks)
        generate_s = time.perf_counter() - started
        experiment = write_experiment(
            sub, {"name": "jsonl", "path": "corpus.jsonl"}, "bytes", "hashing"
        )
        log(f"item 5: ingest {chunks:,} chunks ({format_bytes(corpus['bytes'])} of JSON Lines)")
        ingest = run_cli("ingest", experiment, timeout_s)
        facts = store_facts(sub / "store" / "retro.db")
        peak = format_bytes(ingest["peak_rss"])
        log(f"    {ingest['status']} in {ingest['wall_s']:.0f} s, peak RSS {peak}")
        row = {
            "target_chunks": chunks,
            "corpus": corpus,
            "generate_s": generate_s,
            "ingest": ingest,
            "store": facts,
            "database_bytes": _folder_bytes(sub / "store"),
        }
        if position == len(sizes.ingest_chunks) - 1 and ingest["status"] == "ok":
            database = sub / "store" / "retro.db"

            def embeddings_ready(database: Path = database) -> bool:
                found = query_store(database, "SELECT status FROM embedding_sets")
                return bool(found) and found[0][0] == "ready"

            log(f"item 5: index stage with hashing, stopped when the {chunks:,} embeddings are in")
            index = run_cli("index", experiment, timeout_s, stop_when=embeddings_ready)
            row["index"] = index
            row["index_store"] = store_facts(database)
            log(f"    {index['status']}, stopped {index['stopped']} at {index['stopped_at_s']}")
        rows.append(row)
    return rows


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


# ---------------------------------------------------------------------------------------------
# the tasks: what one worker measures (items 1-3 and the synthetic vectors)
# ---------------------------------------------------------------------------------------------


# --- synthetic vectors -----------------------------------------------------------------------


def synthetic_task(task: dict[str, Any], _worker: Worker) -> dict[str, Any]:
    """Write ``n`` database vectors and ``q`` query vectors (float32 .npy), deterministically."""
    import numpy as np

    started = time.perf_counter()
    n, q, d = task["n"], task["n_queries"], SYNTHETIC_DIM
    rng = np.random.default_rng(task["seed"])
    centres = _unit(rng.standard_normal((SYNTHETIC_CLUSTERS, d), dtype=np.float32))
    sub = np.repeat(centres, SYNTHETIC_SUBCLUSTERS, axis=0)
    sub += (SYNTHETIC_SUB_NOISE / math.sqrt(d)) * rng.standard_normal(sub.shape, dtype=np.float32)

    def block(size: int, generator: Any) -> Any:
        labels = generator.integers(0, len(sub), size)
        noise = generator.standard_normal((size, d), dtype=np.float32)
        return _unit(sub[labels] + (SYNTHETIC_POINT_NOISE / math.sqrt(d)) * noise)

    out = np.lib.format.open_memmap(task["vectors"], "w+", np.float32, (n, d))
    step = 50_000
    for start in range(0, n, step):  # block by block: memory stays at one block
        stop = min(n, start + step)
        out[start:stop] = block(stop - start, np.random.default_rng([task["seed"], start]))
    out.flush()
    del out
    np.save(task["queries"], block(q, np.random.default_rng([task["seed"], -1 % 2**32])))
    return {"seconds": time.perf_counter() - started}


def _unit(x: Any) -> Any:
    import numpy as np

    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# --- items 1 and 2: one retriever on one dataset ---------------------------------------------


def index_task(task: dict[str, Any], _worker: Worker) -> dict[str, Any]:
    """Build the retriever plugin's index, save it, load it back twice (plugin and
    ``faiss.read_index``), time both searches alternately, measure recall."""
    import faiss
    import numpy as np

    ensure_repo_on_path()
    from retro_platform.plugins import build_plugin

    vectors = np.load(task["db"])  # in memory, so that RSS growth is the index's own
    queries = np.ascontiguousarray(np.load(task["queries"]), dtype=np.float32)
    n, d = vectors.shape
    table = {"name": task["retriever"]}
    built = build_plugin("retrievers", table, d)
    gc.collect()
    rss_before = current_rss_bytes()
    started = time.perf_counter()
    built.build(vectors, np.arange(n, dtype=np.int64))
    build_s = time.perf_counter() - started
    rss_after = current_rss_bytes()
    build_peak = peak_rss_bytes()
    path = Path(task["index_path"])
    built.save(path)
    options = built.options.model_dump(mode="json")
    del built, vectors
    gc.collect()

    ours = build_plugin("retrievers", table, d)
    ours.load(path)
    raw = faiss.read_index(str(path))
    searches: dict[str, Callable[[Any, int], tuple[Any, Any]]] = {
        "ours": ours.search,
        "raw": raw.search,
    }
    ks = task["ks"]
    calls: dict[int, int] = {}
    slowest = 0.0
    for k in ks:  # warm-up (first touches of the index's pages, thread pools), calibration
        searches["ours"](queries, k)
        started = time.perf_counter()
        searches["raw"](queries, k)
        elapsed = time.perf_counter() - started
        slowest = max(slowest, elapsed)
        calls[k] = max(1, math.ceil(MIN_TIMED_S / max(elapsed, 1e-6)))
    repeats = task["repeats"] if slowest < SLOW_CALL_S else min(task["repeats"], SLOW_REPEATS)
    times: dict[str, list[float]] = {f"{name}@{k}": [] for name in searches for k in ks}
    cpu_times: dict[str, list[float]] = {key: [] for key in times}
    found: dict[str, Any] = {}
    for repeat in range(repeats):
        names = list(searches) if repeat % 2 == 0 else list(reversed(searches))
        for k in ks:
            for name in names:
                started, cpu_started = time.perf_counter(), time.process_time()
                for _ in range(calls[k]):
                    _scores, ids = searches[name](queries, k)
                times[f"{name}@{k}"].append((time.perf_counter() - started) / calls[k])
                cpu_times[f"{name}@{k}"].append((time.process_time() - cpu_started) / calls[k])
                found[f"{name}@{k}"] = ids
    same = all(np.array_equal(found[f"ours@{k}"], found[f"raw@{k}"]) for k in ks)

    recall: dict[str, float] = {}
    missed: dict[str, float] = {}
    mapped = np.load(task["db"], mmap_mode="r")
    gt_path = Path(task["gt_path"])
    if task["retriever"] == "faiss-flat":
        np.save(gt_path, found[f"ours@{max(ks)}"])
    if gt_path.exists():
        exact = np.load(gt_path)
        for k in ks:
            recall[str(k)], missed[str(k)] = tie_aware_recall(
                mapped, queries, found[f"ours@{k}"], exact, k
            )

    return {
        "n": n,
        "dimension": d,
        "queries": len(queries),
        "options": options,
        "index": describe_index(raw),
        "plugin_index": describe_index(ours.index),
        "faiss_threads": faiss.omp_get_max_threads(),
        "build_s": build_s,
        "rss_growth": rss_after - rss_before,
        "build_peak_rss": build_peak,
        "file_bytes": path.stat().st_size,
        "times": times,
        "cpu_times": cpu_times,
        "calls_per_timing": calls,
        "repeats": repeats,
        "same_results": same,
        "recall": recall,
        "missed": missed,
    }


def exact_scores(vectors: Any, queries: Any, ids: Any) -> Any:
    """Inner products of each query with the vectors of its ids, in float64 (-inf for -1)."""
    import numpy as np

    safe = np.where(ids >= 0, ids, 0)
    rows = np.asarray(vectors[safe.ravel()], dtype=np.float64).reshape(*ids.shape, -1)
    scores = np.einsum("qkd,qd->qk", rows, queries.astype(np.float64))
    scores[ids < 0] = -np.inf
    return scores


def tie_aware_recall(
    vectors: Any, queries: Any, found: Any, exact_ids: Any, k: int
) -> tuple[float, float]:
    """Share of the ``k`` returned ids whose exact score is at least the k-th best exact score
    (minus :data:`TIE_EPSILON`): a duplicate of a true neighbour counts as a hit. Also the
    share of queries with no hit at all."""
    import numpy as np

    kth = exact_scores(vectors, queries, exact_ids[:, :k]).min(axis=1)
    hits = exact_scores(vectors, queries, found[:, :k]) >= kth[:, None] - TIE_EPSILON
    return float(np.mean(hits)), float(np.mean(~hits.any(axis=1)))


def describe_index(index: Any) -> str:
    """The effective Faiss structure and search parameters of an ``IDMap2`` index."""
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    refine = ""
    if isinstance(inner, faiss.IndexRefine):
        refine = f", re-ranked with exact vectors (k_factor {inner.k_factor:g})"
        inner = faiss.downcast_index(inner.base_index)
    if isinstance(inner, faiss.IndexIVFPQ):
        return f"IVF{inner.nlist},PQ{inner.pq.M}x{inner.pq.nbits} nprobe {inner.nprobe}{refine}"
    if isinstance(inner, faiss.IndexHNSW):
        hnsw = inner.hnsw
        return (
            f"HNSW{hnsw.nb_neighbors(1)},Flat efConstruction {hnsw.efConstruction} "
            f"efSearch {hnsw.efSearch}"
        )
    return type(inner).__name__.replace("Index", "")


# --- item 3: embedding throughput --------------------------------------------------------------


def embed_task(task: dict[str, Any], _worker: Worker) -> dict[str, Any]:
    import contextlib

    import numpy as np
    import torch

    texts = read_chunk_texts(Path(task["database"]), task["texts"])
    ensure_repo_on_path()
    from retro_platform.plugins import build_plugin

    plugin = build_plugin("embedders", {"name": "sentence-transformers"})
    options = plugin.options
    batch_size = int(options.batch_size)
    precision = str(getattr(plugin, "precision", options.precision))
    device = str(getattr(plugin, "device", "cpu"))
    model_path = Path(getattr(plugin, "model_path", "") or options.model)
    max_length = getattr(options, "max_length", None)
    processes = getattr(plugin, "workers", 1)
    threads = getattr(plugin, "threads", None)

    from sentence_transformers import SentenceTransformer

    direct_model = SentenceTransformer(str(model_path), device=device, local_files_only=True)
    if max_length is not None:
        direct_model.max_seq_length = max_length
    plain_model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    hashing = build_plugin("embedders", {"name": "hashing"})

    def autocast() -> Any:
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device, dtype=dtype)

    def direct(batch: list[str]) -> Any:
        with autocast():
            return direct_model.encode(
                batch, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
            )

    def plain(batch: list[str]) -> Any:
        return plain_model.encode(batch, show_progress_bar=False)

    variants: dict[str, Callable[[list[str]], Any]] = {
        "ours": plugin.embed,
        "direct": direct,
        "plain": plain,
        "hashing": hashing.embed,
    }
    slices = [texts[i : i + EMBED_SLICE] for i in range(0, len(texts), EMBED_SLICE)]
    for embed in variants.values():  # warm-up with a whole slice: the plugin's model and
        embed(slices[0])  # worker processes start at the first call that is large enough
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu_times: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, Any] = {}
    names = list(variants)
    for repeat in range(task["repeats"]):
        wall = dict.fromkeys(names, 0.0)
        cpu = dict.fromkeys(names, 0.0)
        parts: dict[str, list[Any]] = {name: [] for name in names}
        for index, part in enumerate(slices):  # interleaved slice by slice, against drift
            shift = (repeat * len(slices) + index) % len(names)
            for name in names[shift:] + names[:shift]:
                cpu_started = process_tree_cpu_seconds()  # the plugin's worker processes too
                started = time.perf_counter()
                parts[name].append(np.asarray(variants[name](part), dtype=np.float32))
                wall[name] += time.perf_counter() - started
                cpu[name] += process_tree_cpu_seconds() - cpu_started
        for name in names:
            times[name].append(wall[name])
            cpu_times[name].append(cpu[name])
            outputs[name] = np.concatenate(parts[name])

    ours = _unit(outputs["ours"].copy())
    fp32 = _unit(outputs["plain"].copy())
    query_rows = np.unique(np.linspace(0, len(texts) - 1, task["queries"]).round().astype(int))
    database_rows = np.setdiff1d(np.arange(len(texts)), query_rows)
    recall = {}
    for k in KS:
        exact = fp32[query_rows].astype(np.float64) @ fp32[database_rows].T.astype(np.float64)
        approx = ours[query_rows].astype(np.float64) @ ours[database_rows].T.astype(np.float64)
        top_exact = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        top_ours = np.argsort(-approx, axis=1, kind="stable")[:, :k]
        kth = np.take_along_axis(exact, top_exact, axis=1).min(axis=1)
        hits = np.take_along_axis(exact, top_ours, axis=1) >= kth[:, None] - TIE_EPSILON
        recall[str(k)] = float(hits.mean())
    return {
        "texts": len(texts),
        "queries": len(query_rows),
        "database": len(database_rows),
        "batch_size": batch_size,
        "precision": precision,
        "precision_option": str(options.precision),
        "device": device,
        "max_length": max_length,
        "model": str(model_path),
        "model_max_seq_length": int(direct_model.max_seq_length),
        "plugin_workers": processes,
        "plugin_threads": threads,
        "plain_batch_size": 32,
        "torch_threads": torch.get_num_threads(),
        "times": times,
        "cpu_times": cpu_times,
        "slice": EMBED_SLICE,
        "recall": recall,
        "cosine_ours_fp32_min": float(np.min(np.sum(ours * fp32, axis=1))),
    }


def read_chunk_texts(database: Path, count: int) -> list[str]:
    """``count`` chunk texts spread evenly over the store's chunks (in id order)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        ids = [row[0] for row in connection.execute("SELECT id FROM chunks ORDER BY id")]
        if not ids:
            raise RuntimeError(f"no chunks in {database}")
        step = max(1, len(ids) // count)
        chosen = ids[::step][:count]
        texts = []
        for start in range(0, len(chosen), 500):
            part = chosen[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = dict(
                connection.execute(f"SELECT id, text FROM chunks WHERE id IN ({marks})", part)
            )
            texts += [rows[i] for i in part]
        return texts
    finally:
        connection.close()


#: What ``--worker`` runs, by the task's kind.
WORKER_TASKS = {"synthetic": synthetic_task, "index": index_task, "embed": embed_task}


# ---------------------------------------------------------------------------------------------
# the tables
# ---------------------------------------------------------------------------------------------


def met(value: float | None, ok: bool) -> str:
    return "—" if value is None else ("met" if ok else "**not met**")


def qps(result: dict[str, Any], key: str, clock: str = "times") -> float | None:
    """Queries per second (``clock="cpu_times"``: per CPU-second of the worker process)."""
    seconds = median(result.get(clock, {}).get(key, []))
    return None if not seconds else result["queries"] / seconds


def search_ratios(result: dict[str, Any], k: int) -> tuple[float | None, float | None]:
    """ours/raw queries per second, by wall clock and by CPU time."""
    ratios = []
    for clock in ("times", "cpu_times"):
        ours, raw = qps(result, f"ours@{k}", clock), qps(result, f"raw@{k}", clock)
        ratios.append(ours / raw if ours and raw else None)
    return ratios[0], ratios[1]


def search_verdict(wall: float | None, cpu: float | None) -> str:
    verdict = met(wall, wall is not None and wall >= TARGET_SEARCH_RATIO)
    if wall is not None and wall < TARGET_SEARCH_RATIO and cpu and cpu >= TARGET_SEARCH_RATIO:
        verdict += " (CPU time says ≥: noise?)"
    return verdict


def dataset_label(dataset: str, result: dict[str, Any]) -> str:
    n = result.get("n")
    name = "stdlib MiniLM" if dataset == "stdlib" else "synthetic"
    return f"{name} ({n:,})" if n else name


def search_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        label = dataset_label(result["dataset"], result)
        if result.get("status") != "ok":
            rows.append([label, result["retriever"]] + ["—"] * 7 + [result.get("detail", "")])
            continue
        for k in KS:
            ours, raw = qps(result, f"ours@{k}"), qps(result, f"raw@{k}")
            ratio, cpu_ratio = search_ratios(result, k)
            rows.append(
                [
                    label,
                    result["retriever"],
                    str(k),
                    fmt_number(ours, digits=0),
                    fmt_number(raw, digits=0),
                    "—" if ratio is None else f"**{ratio:.2f}×**",
                    "—" if cpu_ratio is None else f"{cpu_ratio:.2f}×",
                    "yes" if result["same_results"] else "**no**",
                    f"{result.get('repeats', '—')} × {result['calls_per_timing'][str(k)]}",
                    search_verdict(ratio, cpu_ratio),
                ]
            )
    return markdown_table(
        [
            "vectors",
            "retriever",
            "k",
            "ours q/s",
            "raw Faiss q/s",
            "ours/raw",
            "ours/raw, CPU time",
            "same ids",
            "runs × calls",
            f"≥ {TARGET_SEARCH_RATIO}×",
        ],
        rows,
    )


def recall_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        label = dataset_label(result["dataset"], result)
        if result.get("status") != "ok":
            rows.append([label, result["retriever"]] + ["—"] * 8 + [result.get("detail", "")])
            continue
        recall = result.get("recall", {})
        missed = (result.get("missed") or {}).get(str(max(KS)))
        target = TARGET_RECALL.get(result["retriever"])
        values = [recall.get(str(k)) for k in KS]
        if result["retriever"] == "faiss-flat":
            verdict = "exact (the reference)"
        elif None in values or target is None:
            verdict = "—"
        else:
            verdict = f"≥ {target}: " + met(min(values), min(values) >= target)
        rows.append(
            [
                label,
                result["retriever"],
                result["index"]
                + (
                    ""
                    if result.get("plugin_index", result["index"]) == result["index"]
                    else f" (**the plugin searches with {result['plugin_index']}**)"
                ),
                fmt_seconds(result["build_s"]),
                format_bytes(result["file_bytes"]),
                format_bytes(result["rss_growth"]),
                format_bytes(result["build_peak_rss"]),
                *("—" if value is None else f"{value:.3f}" for value in values),
                "—" if missed is None else f"{100 * missed:.1f}%",
                verdict,
            ]
        )
    return markdown_table(
        [
            "vectors",
            "retriever",
            "index (default options)",
            "build s",
            "index file",
            "RSS growth",
            "build peak RSS",
            "recall@2",
            "recall@10",
            f"queries with no hit @{max(KS)}",
            "target",
        ],
        rows,
    )


def embed_table(result: dict[str, Any]) -> str:
    if result.get("status") != "ok":
        return f"not measured: {result.get('detail')}"
    n = result["texts"]
    rate = {name: n / median(times) for name, times in result["times"].items()}
    # CPU time is read from /proc in clock ticks (10 ms): too coarse below a tenth of a second
    cpu_rate = {
        name: n / median(times) if median(times) >= 0.1 else None
        for name, times in result["cpu_times"].items()
    }
    precision = result["precision"]
    labels = {
        "ours": f"ours: sentence-transformers plugin, defaults (batch {result['batch_size']}, "
        + (
            f"{result['plugin_workers']} worker processes × {result['plugin_threads']} thread(s), "
            if (result.get("plugin_workers") or 1) > 1
            else ""
        )
        + f"precision {result['precision_option']}"
        + ("" if result["precision_option"] == precision else f" → {precision}")
        + ")",
        "direct": f"SentenceTransformer.encode direct, batch {result['batch_size']}, {precision}"
        + ("" if precision == "fp32" else " (torch.autocast)")
        + ", normalize_embeddings",
        "plain": "SentenceTransformer.encode, its defaults (batch 32, fp32)",
        "hashing": "ours: hashing plugin, defaults",
    }
    rows = [
        [
            labels[name],
            fmt_number(rate[name], digits=1),
            f"**{rate[name] / rate['direct']:.2f}×**",
            fmt_number(cpu_rate[name], digits=1),
            fmt_ratio(cpu_rate[name], cpu_rate["direct"]),
            ", ".join(fmt_seconds(seconds) for seconds in result["times"][name]),
        ]
        for name in ("ours", "direct", "plain", "hashing")
    ]
    return markdown_table(
        [
            "embedder",
            "chunks/s",
            "vs direct",
            "chunks per CPU-s",
            "vs direct, CPU time",
            "s per run (all runs)",
        ],
        rows,
    )


def pipeline_table(result: dict[str, Any]) -> str:
    ingest, index, store = result["ingest"], result["index"], result["store"]
    rows = [
        [
            "ingest (read, WordPiece-tokenize, chunk, SQL)",
            fmt_seconds(ingest["wall_s"]),
            format_bytes(ingest["peak_rss"]),
            tree_memory(ingest),
            f"{store.get('documents') or 0:,} documents, {store.get('chunks') or 0:,} chunks"
            + ("" if ingest["status"] == "ok" else f"; {ingest['detail']}"),
        ]
    ]
    if index is not None:
        rows.append(
            [
                "index (embed, build, neighbours)",
                fmt_seconds(index["wall_s"]),
                format_bytes(index["peak_rss"]),
                tree_memory(index),
                "" if index["status"] == "ok" else index["detail"],
            ]
        )
        embedding = store.get("embedding")
        if embedding:
            rate = embedding["count"] / embedding["seconds"] if embedding["seconds"] else None
            rows.append(
                [
                    "  of which: embedding (MiniLM, incl. model load)",
                    fmt_seconds(embedding["seconds"]),
                    "",
                    "",
                    f"{embedding['count']:,} chunks, **{fmt_number(rate)} chunks/s**",
                ]
            )
        if store.get("index"):
            built = store["index"]
            rows.append(
                [
                    f"  of which: {built['retriever']} build",
                    fmt_seconds(built["seconds"]),
                    "",
                    "",
                    f"{built['count']:,} vectors (validation documents held out)",
                ]
            )
        if store.get("neighbours"):
            found = store["neighbours"]
            rows.append(
                [
                    "  of which: neighbours (same-document exclusion)",
                    fmt_seconds(found["seconds"]),
                    "",
                    "",
                    f"k = {found['k']} for {found['count']:,} chunks",
                ]
            )
    total = pipeline_total(result)
    rows.append(
        [
            "**total**",
            f"**{fmt_seconds(total)}**",
            format_bytes(
                max(filter(None, [ingest["peak_rss"], (index or {}).get("peak_rss")]), default=None)
            ),
            format_bytes(
                max(
                    filter(None, [ingest["tree_peak_rss"], (index or {}).get("tree_peak_rss")]),
                    default=None,
                )
            ),
            f"target < {TARGET_PIPELINE_S:.0f} s: "
            + met(total, total is not None and total < TARGET_PIPELINE_S),
        ]
    )
    return markdown_table(
        [
            "stage (CLI process)",
            "wall s",
            "peak RSS, main process",
            "peak RSS, all its processes",
            "",
        ],
        rows,
    )


def tree_memory(run: dict[str, Any], at_stop: bool = False) -> str:
    """The polled peak of the summed RSS of a CLI process and its descendants."""
    peak = run.get("tree_peak_rss_at_stop" if at_stop else "tree_peak_rss")
    processes = run.get("tree_processes") or 1
    return format_bytes(peak) + (f" ({processes} processes)" if processes > 1 else "")


def pipeline_total(result: dict[str, Any]) -> float | None:
    if (
        result["ingest"]["status"] != "ok"
        or not result["index"]
        or result["index"]["status"] != "ok"
    ):
        return None
    return result["ingest"]["wall_s"] + result["index"]["wall_s"]


def ingest_table(rows_in: list[dict[str, Any]]) -> str:
    rows = []
    for row in rows_in:
        ingest, store = row["ingest"], row["store"]
        chunks = store.get("chunks") or 0
        rate = chunks / ingest["wall_s"] if ingest["wall_s"] else None
        rows.append(
            [
                f"{chunks:,} chunks, {store.get('documents') or 0:,} documents",
                "ingest (bytes tokenizer)",
                fmt_seconds(ingest["wall_s"]),
                fmt_number(rate, digits=0),
                format_bytes(ingest["peak_rss"]),
                tree_memory(ingest),
                format_bytes(row["database_bytes"])
                + " store"
                + ("" if ingest["status"] == "ok" else f"; {ingest['status']}: {ingest['detail']}"),
            ]
        )
        index = row.get("index")
        if index is not None:
            embedding = (row.get("index_store") or {}).get("embedding") or {}
            seconds = embedding.get("seconds")
            done = embedding.get("done") or 0
            note = (
                "stopped when the embeddings were stored (Faiss build and the 1-query-per-chunk "
                "neighbour search not run)"
                if index["stopped"]
                else f"{index['status']} {index['detail']}"
            )
            rows.append(
                [
                    "",
                    "index: embedding part (hashing, 256-d)",
                    fmt_seconds(seconds),
                    fmt_number(done / seconds if seconds else None, digits=0),
                    format_bytes(
                        index["peak_rss_at_stop"] if index["stopped"] else index["peak_rss"]
                    ),
                    tree_memory(index, at_stop=index["stopped"]),
                    note,
                ]
            )
    return markdown_table(
        [
            "corpus",
            "stage (CLI process)",
            "s",
            "chunks/s",
            "peak RSS, main process",
            "peak RSS, all its processes",
            "",
        ],
        rows,
    )


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    index_results = results.get("index_results") or []
    if 1 in results["items"]:
        for retriever in RETRIEVERS:
            ratios = []
            for result in index_results:
                if result["retriever"] != retriever or result.get("status") != "ok":
                    continue
                for k in KS:
                    ratio, cpu_ratio = search_ratios(result, k)
                    if ratio is not None:
                        ratios.append((ratio, cpu_ratio, f"{result['dataset']}, k={k}"))
            worst = min(ratios, default=None)
            rows.append(
                [
                    f"search q/s through the {retriever} plugin vs raw Faiss",
                    "—"
                    if worst is None
                    else f"{worst[0]:.2f}× (lowest: {worst[2]}; CPU time "
                    + ("—" if worst[1] is None else f"{worst[1]:.2f}×")
                    + ")",
                    f"≥ {TARGET_SEARCH_RATIO}×",
                    "—" if worst is None else search_verdict(worst[0], worst[1]),
                ]
            )
    if 2 in results["items"]:
        for retriever in ("faiss-hnsw", "faiss-ivfpq"):
            for result in index_results:
                if result["retriever"] != retriever:
                    continue
                recall = result.get("recall") or {}
                values = [recall.get(str(k)) for k in KS]
                ok = None not in values and min(values) >= TARGET_RECALL[retriever]
                rows.append(
                    [
                        f"{retriever} recall@2 / @10, {dataset_label(result['dataset'], result)}",
                        " / ".join("—" if v is None else f"{v:.3f}" for v in values),
                        f"≥ {TARGET_RECALL[retriever]}",
                        met(None if None in values else 0.0, ok),
                    ]
                )
    embed = results.get("embed")
    if embed and embed.get("status") == "ok":
        n = embed["texts"]
        ours = n / median(embed["times"]["ours"])
        direct = n / median(embed["times"]["direct"])
        cpu = fmt_ratio(median(embed["cpu_times"]["direct"]), median(embed["cpu_times"]["ours"]))
        rows.append(
            [
                "embedding chunks/s, plugin vs direct encode (same settings)",
                f"{ours / direct:.2f}× ({ours:.1f} vs {direct:.1f}; CPU time {cpu})",
                f"≥ {TARGET_EMBED_RATIO}×",
                met(ours, ours / direct >= TARGET_EMBED_RATIO),
            ]
        )
        recall = embed["recall"]["10"]
        rows.append(
            [
                f"recall@10 of the plugin's default vectors ({embed['precision']}) vs fp32",
                f"{recall:.3f}",
                f"≥ {TARGET_EMBED_RECALL}",
                met(recall, recall >= TARGET_EMBED_RECALL),
            ]
        )
    pipeline = results.get("pipeline")
    if pipeline and 4 in results["items"]:
        total = pipeline_total(pipeline)
        chunks = pipeline["store"].get("chunks") or 0
        rows.append(
            [
                f"ingest + index, python-stdlib ({chunks:,} chunks), MiniLM",
                "—" if total is None else f"{total:.0f} s ({total / 60:.1f} min)",
                f"< {TARGET_PIPELINE_S / 60:.0f} min",
                met(total, total is not None and total < TARGET_PIPELINE_S),
            ]
        )
    for row in results.get("ingest_scale") or []:
        if row is not (results.get("ingest_scale") or [])[-1]:
            continue
        # the larger of the process's own peak and the polled peak of all its processes
        peaks = [row["ingest"]["peak_rss"], row["ingest"].get("tree_peak_rss")]
        peak = max(filter(None, peaks), default=None)
        chunks = row["store"].get("chunks") or 0
        rows.append(
            [
                f"ingest peak RSS, {chunks:,} chunks",
                f"{format_bytes(peak)} ({(peak or 0) / 1e9:.2f} GB)",
                "< 2 GB",
                met(
                    peak,
                    peak is not None
                    and row["ingest"]["status"] == "ok"
                    and peak < TARGET_INGEST_RSS,
                ),
            ]
        )
    if results["quick"]:
        for row in rows:
            row[-1] += " (quick sizes)"
    return rows


def header_lines(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    loads = results["load_average"]
    lines = [
        "# Retrieval-store benchmark (issue 3)",
        "",
        f"- command: `{results['command']}`",
        f"- CPU: {machine['cpu']}, {machine['cpu_count']} cores ({machine['affinity']} usable), "
        f"memory {format_bytes(machine['memory'])}; CPU flags: {machine['cpu_flags']}; "
        f"Faiss's OpenBLAS: {machine['faiss_openblas']}",
        "- " + ", ".join(f"{name} {version}" for name, version in machine["versions"].items()),
        f"- 1-min load average: start {loads[0]:.1f}, end {loads[-1]:.1f} "
        "(other work on the machine slows every figure; ratios are measured in the same run)",
        f"- timed runs after a warm-up, median: {results['repeats']['search']} per search "
        f"(each run at least {MIN_TIMED_S:g} s of calls), {results['repeats']['embedding']} "
        "per embedder" + ("; --quick (tiny sizes)" if results["quick"] else ""),
        f"- wall time: {results['wall_s']:.0f} s",
    ]
    return lines


def print_report(results: dict[str, Any]) -> None:
    print("\n".join(header_lines(results)))
    items = results["items"]
    index_results = results.get("index_results") or []
    ok_result = next((r for r in index_results if r.get("status") == "ok"), None)
    if 1 in items:
        print("\n## 1. Search: our retriever plugins vs raw Faiss, same index file, same queries\n")
        print(search_table(index_results))
        if ok_result:
            print(
                f"\n{ok_result['queries']:,} queries per search call (held-out vectors); Faiss "
                f"threads {ok_result['faiss_threads']}; ours = `build_plugin(...).load(file)` "
                "then `.search`, raw = `faiss.read_index(file)` then `.search` (the same "
                "`IDMap2` index with the search parameters stored in the file); the two are "
                "timed alternately. `ours/raw, CPU time`: the same ratio by the worker's CPU "
                "time (all threads), which other work on the machine disturbs less than the "
                "wall clock. `same ids`: both returned identical ids. `runs × calls`: "
                f"timed runs (median; {SLOW_REPEATS} at most where one call takes over "
                f"{SLOW_CALL_S:g} s) × search calls per run (enough for {MIN_TIMED_S:g} s)."
            )
    if 2 in items:
        print("\n## 2. Recall against faiss-flat (tie-aware), build time and memory\n")
        print(recall_table(index_results))
        print(
            f"\nA returned chunk is a hit when its exact inner product is within {TIE_EPSILON:g} "
            "of the k-th exact one (duplicates of a true neighbour count). `queries with no hit`: "
            "share of queries whose whole answer missed (a search that ended in the wrong part of "
            "the space, as opposed to slightly wrong neighbours). RSS growth: the "
            "worker's RSS after build() minus before (the vectors already in memory); build "
            "peak RSS includes the input vectors."
        )
        synthetic = results.get("synthetic")
        if synthetic:
            print(
                f"Synthetic vectors: {SYNTHETIC_DIM}-d unit vectors, a two-level Gaussian "
                f"mixture ({SYNTHETIC_CLUSTERS} random unit centres × {SYNTHETIC_SUBCLUSTERS} "
                f"sub-centres at noise {SYNTHETIC_SUB_NOISE}, points at noise "
                f"{SYNTHETIC_POINT_NOISE}; seed {SEED}); queries drawn from the same mixture."
            )
    if 3 in items:
        embed = results.get("embed") or {}
        print("\n## 3. Embedding throughput (chunks/s) and the default precision's recall\n")
        print(embed_table(embed))
        if embed.get("status") == "ok":
            recall = embed["recall"]
            print(
                f"\n{embed['texts']:,} real stdlib chunk texts (64 WordPiece tokens each, from "
                f"item 4's store) per run, embedded {embed['slice']} at a time by each "
                "variant in turn; chunks/s is the median over the runs (bold: the target's "
                "ratio); CPU time is the benchmark worker's (all threads, plus the plugin's "
                "own worker processes), a check on noise from other work on the machine. "
                f"Device {embed['device']}, torch threads "
                f"{embed['torch_threads']}, model max_seq_length {embed['model_max_seq_length']}. "
                f"Recall of the plugin's default vectors ({embed['precision']}) against plain "
                f"fp32 vectors, {embed['queries']} query chunks among {embed['database']:,}, "
                f"tie-aware: recall@2 {recall['2']:.3f}, recall@10 {recall['10']:.3f} "
                f"(lowest cosine between a chunk's two vectors: "
                f"{embed['cosine_ours_fp32_min']:.5f})."
            )
    if 4 in items and results.get("pipeline"):
        print("\n## 4. Ingest + index of the python-stdlib corpus (MiniLM, faiss-flat), the CLI\n")
        print(pipeline_table(results["pipeline"]))
        print(
            "\nEach stage is `python -m retro_platform.cli STAGE experiment.toml` in a process of "
            "its own; wall time from the driver. Peak RSS, main process: its own VmHWM "
            "(polled); all its processes: the largest sum of the RSS of the process and its "
            "descendants (the embedder's worker processes) seen at one poll (every 0.1 s), "
            "shared library pages counted once per process. Sub-stage seconds are what the "
            "store records."
        )
    if 5 in items and results.get("ingest_scale"):
        print("\n## 5. Ingest memory at scale (synthetic JSON Lines, bytes tokenizer, hashing)\n")
        print(ingest_table(results["ingest_scale"]))
        print(
            f"\nDocuments of {INGEST_CHUNKS_PER_DOC} chunks × {INGEST_CHUNK_BYTES} ASCII bytes "
            "(seeded random words); chunk_size 64. Memory must not grow with the corpus: "
            "compare the two ingest rows."
        )
    print("\n## Summary: the issue's targets\n")
    print(markdown_table(["target", "measured", "target", "met?"], summary_rows(results)))
    for note in results.get("notes", []):
        print(f"- {note}")


# ---------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for package in ("numpy", "torch", "faiss-cpu", "sentence-transformers", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    memory = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            memory = int(meminfo.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("flags")), "")
            flags = set(line.split(":", 1)[-1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory": memory,
        "versions": versions,
        "cpu_flags": ", ".join(flag for flag in wanted if flag in flags) or "none of AVX2/AVX-512",
        "faiss_openblas": faiss_openblas(),
    }


def faiss_openblas() -> str:
    """The core type Faiss's bundled OpenBLAS chose for this CPU (its matrix products run on
    it: flat search, k-means), or what is known instead."""
    import ctypes
    import glob

    try:
        import faiss

        libs = os.path.join(os.path.dirname(faiss.__file__), os.pardir, "faiss_cpu.libs")
        found = sorted(glob.glob(os.path.join(libs, "libopenblas*.so*")))
        if not found:
            return "not bundled (another BLAS)"
        library = ctypes.CDLL(found[0])
        library.openblas_get_corename.restype = ctypes.c_char_p
        library.openblas_get_config.restype = ctypes.c_char_p
        config = library.openblas_get_config().decode().split()
        version = config[1] if len(config) > 1 else "?"
        core = library.openblas_get_corename().decode()
        override = os.environ.get("OPENBLAS_CORETYPE")
        return f"{version}, core {core}" + (f" (OPENBLAS_CORETYPE={override})" if override else "")
    except Exception as error:  # a fact for the header only
        return f"unknown ({type(error).__name__})"


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return serve(args, WORKER_TASKS)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep.resolve()
        results = run_benchmark(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="retro-retrieval-bench-") as scratch:
            results = run_benchmark(args, Path(scratch))
    if args.json is not None:  # first: the measurements survive a failure to print them
        args.json.write_text(json.dumps(results, indent=2, default=str))
        log(f"wrote {args.json}")
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
