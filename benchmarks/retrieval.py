"""Retrieval-store benchmark (issue 3): search, recall, embedding, ingest + index, in one run.

    python benchmarks/retrieval.py [--quick] [--only 1,2,3,4,5,6] [--datasets stdlib,synthetic]
                                   [--repeats N] [--json out.json] [--keep DIR] [--plot PNG]

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
6. Recall@10 against queries/s (in the style of ann-benchmarks) of faiss-flat, faiss-ivfpq,
   faiss-hnsw and the third-party scann plugin on the vectors of items 1-2: each built once at
   its default options, then searched at every value of its search-time knob (nprobe,
   efSearch, leaves_to_search), a table and a plot (``--plot``).

Every measurement whose memory matters runs in a process of its own: the CLI stages (4, 5) are
watched from outside (``_tasks.run_watched``: ``VmHWM`` of ``/proc/PID/status``, polled), the
index and embedding measurements (1-3, 6) are tasks that ``_tasks.TaskRunner`` runs in fresh
processes of this script. Items 1-3 reuse the MiniLM embeddings and chunk texts of item 4's
store. See ``benchmarks/README.md``.

The script reads top-down: the options, what is run (the CLI stages and the tasks, in order),
the report. What is measured (the sizes, the CLI stages, the tasks) is in ``retrieval_tasks.py``,
the tables and the issue's targets in ``retrieval_report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from _common import log
from _tasks import TaskRunner, add_worker_arguments, serve
from retrieval_report import machine_facts, plot_recall_vs_qps, print_report
from retrieval_tasks import (
    DATASETS,
    FULL,
    ITEMS,
    MIN_TIMED_S,
    QUICK,
    WORKER_TASKS,
    allow_scann,
    finished_stdlib_store,
    prepare_stdlib_vectors,
    prepare_synthetic_vectors,
    run_index_measurements,
    run_ingest_scale,
    run_recall_sweep,
    run_stdlib_pipeline,
)

# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: a smoke test")
    parser.add_argument(
        "--only", default="1,2,3,4,5,6", help="items to run, e.g. 1,2 (default all)"
    )
    parser.add_argument(
        "--datasets",
        default="stdlib,synthetic",
        help="vector sets of items 1, 2 and 6 (default stdlib,synthetic)",
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
        help="synthetic vectors of items 1, 2 and 6 (1,000,000; 20,000 with --quick)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="item 6's recall/throughput plot (PNG; default benchmarks/results/recall_vs_qps.png, "
        "none with --quick)",
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
        parser.error(f"--only takes item numbers 1-6 separated by commas, got {args.only!r}")
    if not args.items or set(args.items) - set(ITEMS):
        parser.error(f"--only takes item numbers 1-6 separated by commas, got {args.only!r}")
    args.datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    if not args.datasets or set(args.datasets) - set(DATASETS):
        parser.error(f"--datasets takes stdlib and/or synthetic, got {','.join(args.datasets)!r}")
    if args.vectors is not None and args.vectors < 1000:
        parser.error("--vectors must be at least 1000 (faiss-ivfpq trains on them)")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.search_repeats = args.repeats or (1 if args.quick else 5)
    args.embed_repeats = args.repeats or (1 if args.quick else 3)
    # item 6 times many points: each run at least a second of calls, a tenth with --quick
    args.sweep_min_s = MIN_TIMED_S / 10 if args.quick else MIN_TIMED_S
    if args.plot is None and not args.quick:
        args.plot = Path(__file__).resolve().parent / "results" / "recall_vs_qps.png"
    return args


# ---------------------------------------------------------------------------------------------
# what is run: items 4, 3, 1 and 2, 6, 5
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

    needs_store = bool(items & {1, 2, 6}) and "stdlib" in args.datasets or 3 in items
    embeddings: Path | None = None
    if 4 in items:
        results["pipeline"] = run_stdlib_pipeline(stdlib_folder, sizes, args.timeout_s)
        embeddings = finished_stdlib_store(stdlib_folder)
    elif needs_store:
        embeddings = finished_stdlib_store(stdlib_folder)
        if embeddings is None:
            log("items 1-3, 6 need item 4's store: running ingest + index first (not reported)")
            run_stdlib_pipeline(stdlib_folder, sizes, args.timeout_s)
            embeddings = finished_stdlib_store(stdlib_folder)
            results["notes"].append("item 4's store was built first for items 1-3, 6")
        else:
            results["notes"].append(f"items 1-3, 6 reused the stdlib store in {stdlib_folder}")
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

    datasets: dict[str, dict[str, Any]] = {}
    if items & {1, 2, 6}:
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
    if items & {1, 2}:
        results["index_results"] = run_index_measurements(
            datasets, work / "indexes", runner, args.search_repeats
        )

    if 6 in items:
        results["sweep"] = run_recall_sweep(
            datasets,
            work / "indexes",
            runner,
            args.search_repeats,
            args.sweep_min_s,
            one_worker=args.quick,
        )

    if 5 in items:
        results["ingest_scale"] = run_ingest_scale(work / "ingest", sizes, args.timeout_s)

    results["load_average"].append(os.getloadavg()[0])
    results["wall_s"] = time.perf_counter() - started
    return results


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return serve(args, WORKER_TASKS)
    args.argv = sys.argv[1:] if argv is None else argv
    if 6 in args.items:  # fail now, not after the other items' minutes
        problem = allow_scann()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
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
    if args.plot is not None and results.get("sweep"):
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_recall_vs_qps(results, args.plot)
        results["plot"] = str(args.plot)
        log(f"wrote {args.plot}")
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
