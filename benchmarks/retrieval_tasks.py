"""What the retrieval benchmark measures: the CLI stages it watches (items 4, 5) and the tasks
its worker processes run (items 1-3, the synthetic vectors)."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    current_rss_bytes,
    ensure_repo_on_path,
    format_bytes,
    log,
    peak_rss_bytes,
    process_tree_cpu_seconds,
)
from _tasks import TaskRunner, Worker, child_env, log_tail, run_watched

SEED = 0
ITEMS = (1, 2, 3, 4, 5, 6)
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


#: Item 6: recall@10 against queries/s. Each retriever is built once at its default options
#: and searched again for every value of its search-time knob (no rebuild); faiss-flat is exact
#: (one point, the reference). ScaNN's leaves go up to all of its leaves (known after build).
SWEEP_K = 10
SWEEP_RETRIEVERS = ("faiss-flat", "faiss-ivfpq", "faiss-hnsw", "scann")
SWEEPS: dict[str, tuple[str, tuple[int, ...]]] = {
    "faiss-flat": ("", ()),
    "faiss-ivfpq": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128)),
    "faiss-hnsw": ("efSearch", (10, 16, 32, 64, 128, 256, 512)),
    "scann": ("leaves_to_search", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
}
#: ScaNN is swept at its default ``reorder`` (100) and at this larger one as a second line.
SCANN_EXTRA_REORDER = 400
#: The third-party plugin item 6 needs, and how to get it.
SCANN_DISTRIBUTION = "retro-platform-scann"
SCANN_HINT = (
    f"item 6 needs the scann retriever plugin: pip install ./plugins/{SCANN_DISTRIBUTION} "
    "(or leave item 6 out: --only 1,2,3,4,5)"
)

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
# the CLI stages: items 4 and 5, and the stores and vectors of items 1-3
# ---------------------------------------------------------------------------------------------


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


def unmeasured(dataset: str, data: dict[str, Any], retrievers: Any) -> list[dict[str, Any]]:
    """A row per retriever for a dataset whose vectors could not be made, saying why."""
    status, detail = data.get("status", "error"), data.get("detail", "no vectors")
    return [
        {"dataset": dataset, "retriever": name, "status": status, "detail": detail}
        for name in retrievers
    ]


def run_index_measurements(
    datasets: dict[str, dict[str, Any]], folder: Path, runner: TaskRunner, repeats: int
) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for dataset, data in datasets.items():
        if "db" not in data:
            results += unmeasured(dataset, data, RETRIEVERS)
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


def allow_scann() -> str | None:
    """Let the scann plugin load in this process even under an allow-list that leaves it out
    (the project's tests set ``RETRO_PLATFORM_LOAD_PLUGINS=""``), then look it up through the
    plugin registry as the CLI does. Returns None, or why it is not available."""
    ensure_repo_on_path()
    from retro_platform.errors import UnknownPluginError
    from retro_platform.plugins import (
        LOAD_PLUGINS_ENV,
        get_registration,
        normalize,
        reset_plugins,
    )

    allowed = os.environ.get(LOAD_PLUGINS_ENV)
    names = {normalize(name) for name in (allowed or "").split(",") if name.strip()}
    if allowed is not None and not names & {"scann", normalize(SCANN_DISTRIBUTION)}:
        os.environ[LOAD_PLUGINS_ENV] = ",".join(filter(None, [allowed, SCANN_DISTRIBUTION]))
        reset_plugins()
    try:
        get_registration("retrievers", "scann")
    except UnknownPluginError as error:
        return f"{SCANN_HINT}; {error}"
    return None


def run_recall_sweep(
    datasets: dict[str, dict[str, Any]],
    folder: Path,
    runner: TaskRunner,
    repeats: int,
    min_timed_s: float,
    one_worker: bool = False,
) -> list[dict[str, Any]]:
    """Item 6: one worker per retriever and dataset, faiss-flat first (the exact answers);
    with ``one_worker`` (--quick) one worker per dataset runs all four, which saves three
    start-ups of torch and Faiss."""
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for dataset, data in datasets.items():
        if "db" not in data:
            results += unmeasured(dataset, data, SWEEP_RETRIEVERS)
            continue
        gt_path = folder / f"{dataset}-sweep-exact-top{SWEEP_K}.npy"
        gt_path.unlink(missing_ok=True)
        groups = [SWEEP_RETRIEVERS] if one_worker else [(name,) for name in SWEEP_RETRIEVERS]
        for group in groups:
            log(f"item 6: {', '.join(group)} on {dataset} ({data['n']:,} vectors), sweeping")
            outcome = runner.run(
                {
                    "kind": "sweep",
                    "retrievers": list(group),
                    "db": data["db"],
                    "queries": data["queries"],
                    "k": SWEEP_K,
                    "repeats": repeats,
                    "min_timed_s": min_timed_s,
                    "gt_path": str(gt_path),
                    "index_folder": str(folder),
                }
            )
            found = {r["retriever"]: r for r in outcome.pop("results", [])}
            for retriever in group:  # a failed worker fails each of its retrievers
                result = {**outcome, **found.get(retriever, {})}
                result.update(dataset=dataset, retriever=retriever)
                results.append(result)
                if result.get("status") == "ok":
                    best = max(result["points"], key=lambda point: point["recall"])
                    log(
                        f"    {retriever} built in {result['build_s']:.1f} s; "
                        f"{len(result['points'])} points, best recall@{SWEEP_K} "
                        f"{best['recall']:.3f}"
                    )
                else:
                    log(f"    {retriever} {result.get('status')}: {result.get('detail')}")
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


# --- item 6: one retriever on one dataset, its search-time knob swept ----------------------


def sweep_settings(retriever: str, num_leaves: int | None) -> list[dict[str, int]]:
    """The search-time options of each point of ``retriever``'s curve ([{}] for exact search)."""
    knob, values = SWEEPS[retriever]
    if retriever == "scann":
        if not num_leaves:  # too few vectors for a tree: ScaNN searches exactly
            return [{}]
        leaves = [v for v in values if v < num_leaves] + [num_leaves]
        return [{knob: v} for v in leaves] + [
            {knob: v, "reorder": SCANN_EXTRA_REORDER} for v in leaves if v >= 4
        ]
    return [{knob: v} for v in values] if knob else [{}]


def sweep_task(task: dict[str, Any], _worker: Worker) -> dict[str, Any]:
    """:func:`sweep_one` for each of the task's retrievers, in order, removing each index file."""
    results = []
    for name in task["retrievers"]:
        path = Path(task["index_folder"]) / f"sweep-{name}.index"
        try:
            results.append(sweep_one(name, task, path))
        finally:
            path.unlink(missing_ok=True)
    return {"results": results}


def sweep_one(name: str, task: dict[str, Any], path: Path) -> dict[str, Any]:
    """Build the retriever plugin's index once at default options and save it; then, for each
    value of its search-time knob, load that file into a plugin configured with the value (what
    a user's changed experiment file does) and time a search of all queries, k = 10."""
    import numpy as np

    if name == "scann":
        problem = allow_scann()
        if problem:
            raise RuntimeError(problem)
    ensure_repo_on_path()
    from retro_platform.plugins import build_plugin

    vectors = np.load(task["db"])
    queries = np.ascontiguousarray(np.load(task["queries"]), dtype=np.float32)
    n, d = vectors.shape
    k = task["k"]
    built = build_plugin("retrievers", {"name": name}, d)
    gc.collect()
    rss_before = current_rss_bytes()
    started = time.perf_counter()
    built.build(vectors, np.arange(n, dtype=np.int64))
    build_s = time.perf_counter() - started
    rss_growth = current_rss_bytes() - rss_before
    built.save(path)
    options = built.options.model_dump(mode="json")
    num_leaves = getattr(built, "num_leaves", None)
    index = describe_index(built.index) if name != "scann" else describe_scann(built)
    del built, vectors
    gc.collect()

    mapped = np.load(task["db"], mmap_mode="r")
    gt_path = Path(task["gt_path"])
    exact = np.load(gt_path) if gt_path.exists() else None
    points = []
    for setting in sweep_settings(name, num_leaves):
        searcher = build_plugin("retrievers", {"name": name, **setting}, d)
        searcher.load(path)
        timing = time_search(searcher.search, queries, k, task["repeats"], task["min_timed_s"])
        ids = timing.pop("ids")
        if name == "faiss-flat":
            np.save(gt_path, ids)
            exact = ids
        recall = missed = None
        if exact is not None:
            recall, missed = tie_aware_recall(mapped, queries, ids, exact, k)
        points.append({"setting": setting, "recall": recall, "missed": missed, **timing})
        del searcher
        gc.collect()
    return {
        "retriever": name,
        "n": n,
        "dimension": d,
        "queries": len(queries),
        "k": k,
        "options": options,
        "index": index,
        "num_leaves": num_leaves,
        "build_s": build_s,
        "rss_growth": rss_growth,
        "file_bytes": path.stat().st_size,
        "threads": search_threads(name),
        "points": points,
    }


def time_search(
    search: Callable[[Any, int], tuple[Any, Any]],
    queries: Any,
    k: int,
    repeats: int,
    min_timed_s: float,
) -> dict[str, Any]:
    """Seconds per ``search(queries, k)`` call: one warm-up call, then ``repeats`` timed runs
    (:data:`SLOW_REPEATS` at most where a call takes over :data:`SLOW_CALL_S`), each repeating
    the call until it has run ``min_timed_s``."""
    started = time.perf_counter()
    _scores, ids = search(queries, k)
    elapsed = time.perf_counter() - started
    calls = max(1, math.ceil(min_timed_s / max(elapsed, 1e-6)))
    runs = repeats if elapsed < SLOW_CALL_S else min(repeats, SLOW_REPEATS)
    times, cpu_times = [], []
    for _ in range(runs):
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(calls):
            _scores, ids = search(queries, k)
        times.append((time.perf_counter() - started) / calls)
        cpu_times.append((time.process_time() - cpu_started) / calls)
    return {"times": times, "cpu_times": cpu_times, "calls": calls, "ids": ids}


def search_threads(retriever: str) -> int | str:
    """The threads a search may use: Faiss's OpenMP setting; ScaNN's own choice (every core)."""
    if retriever == "scann":
        return "ScaNN's choice"
    import faiss

    return int(faiss.omp_get_max_threads())


def describe_scann(retriever: Any) -> str:
    options = retriever.options
    if not retriever.num_leaves:
        return "brute force (too few vectors for a tree)"
    return (
        f"tree of {retriever.num_leaves} leaves, AH {options.dimensions_per_block} dims/block, "
        f"exact reorder"
    )


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
WORKER_TASKS = {
    "synthetic": synthetic_task,
    "index": index_task,
    "embed": embed_task,
    "sweep": sweep_task,
}
