"""On-disk IVF index benchmark (issue 16): search and memory of ``faiss-ivf-ondisk`` against the
same IVF index held in memory, in one run.

    python benchmarks/ondisk_index.py [--quick] [--vectors N] [--nprobe 8,32,128]
                                      [--resident-mib 128] [--json out.json] [--keep DIR]

1. Synthetic data: N clustered float32 vectors of 128 dimensions (1,000 Gaussian clusters),
   generated block by block into a memory-mapped ``.npy`` on disk, and 10,000 queries drawn
   the same way (the full run: N = 2,000,000, 1 GB of vectors).
2. Build: ``faiss-ivf-ondisk`` (IVF-Flat, nlist 4096 trained on 160k sampled vectors, vectors
   read in blocks of 65,536) through the retriever plugin, as ``retro-platform index`` builds
   it; then the same index in memory: a copy of its trained, empty IVF index given every vector
   (``IndexIVFFlat``, written whole). Wall time, ``VmHWM`` and the peak anonymous RSS
   (``RssAnon``, sampled every 0.1 s) of each build's process; the sharded variant too
   (``shards = 4``, the same options).
3. Search: for each nprobe, a fresh process loads one index and searches every query in
   batches of 1,000, twice: first with the index's files dropped from the page cache
   (``posix_fadvise(DONTNEED)`` beforehand: "cold"), then again ("warm"). Queries/s of each
   pass; ``VmHWM``, ``RssAnon`` and ``RssFile`` after loading, after the first 100 queries and
   at the end; whether the answers (ids) equal the in-memory index's. The on-disk index is
   searched twice per nprobe: as it maps its lists by default, and with ``resident_mib`` set
   (``--resident-mib``), which drops each block of queries' mapped pages after the block.

Every build and search runs in a process of its own (``_tasks.TaskRunner``), so every memory
figure belongs to one task. ``RssFile`` counts the pages of the memory-mapped lists a search has
touched: clean page cache, shared and reclaimable, which the kernel drops under memory pressure;
``RssAnon`` is the process's own memory. The issue's target compares the on-disk search
process's RSS with the in-memory index's size (a quarter).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

# The tasks run in fresh processes of this script that import only what they measure: the
# benchmarks' shared helpers import torch, which alone would add 160 MiB to every RSS figure.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS = Path(__file__).resolve().parent / "results" / "ondisk_index.json"
DIMENSION = 128
CLUSTERS = 1000
K = 10
BATCH = 1000
FIRST_QUERIES = 100
GENERATE_BLOCK = 100_000

FULL = {
    "vectors": 2_000_000,
    "queries": 10_000,
    "nlist": 4096,
    "train_size": 160_000,
    "block_size": 65_536,
    "nprobe": [8, 32, 128],
    "sharded_nprobe": 32,
    "resident_mib": 128,
}
QUICK = {
    "vectors": 20_000,
    "queries": 500,
    "nlist": 64,
    "train_size": 2_560,
    "block_size": 4_096,
    "nprobe": [4, 16],
    "sharded_nprobe": 16,
    "resident_mib": 2,
}
SHARDS = 4
BUILDS = ("build_ondisk", "build_memory", "build_sharded")


# ---------------------------------------------------------------------------------------------
# command line and the run
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20k vectors: a smoke test")
    parser.add_argument("--vectors", type=int, default=None, help="database size N")
    parser.add_argument("--nprobe", default=None, help="comma-separated nprobe values")
    parser.add_argument(
        "--resident-mib", type=int, default=None,
        help="the on-disk index's resident_mib in its bounded rows (default 128; --quick 2)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=3, help="searches of every row, medians reported"
    )
    parser.add_argument(
        "--json", type=Path, default=None,
        help=f"where the results go; default {RESULTS.name} in benchmarks/results, except with "
        "--quick (a smoke test does not replace the measured figures)",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, default=None, help="keep data and indexes here")
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="search again the data and indexes that a --keep run left in this folder",
    )
    parser.add_argument("--task", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--task-out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.task:  # a task, in a process of its own
        task = json.loads(args.task)
        result = HANDLERS[task["kind"]](task)
        args.task_out.write_text(json.dumps(result), encoding="utf-8")
        return 0
    from _common import log

    sizes = dict(QUICK if args.quick else FULL)
    if args.quick:
        args.rounds = 1
    if args.vectors:
        sizes["vectors"] = args.vectors
    if args.nprobe:
        sizes["nprobe"] = [int(value) for value in args.nprobe.split(",")]
    if args.resident_mib:
        sizes["resident_mib"] = args.resident_mib
    folder = args.reuse or args.keep or Path(tempfile.mkdtemp(prefix="retro-ondisk-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        results = run(folder, sizes, reuse=args.reuse is not None, rounds=args.rounds)
    finally:
        if args.keep is None and args.reuse is None:
            shutil.rmtree(folder, ignore_errors=True)
    results["quick"] = args.quick
    print_report(results)
    target = args.json or (None if args.quick else RESULTS)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        log(f"results written to {target}")
    return 0


def run(
    folder: Path, sizes: dict[str, Any], *, reuse: bool = False, rounds: int = 1
) -> dict[str, Any]:
    from _common import log

    vectors, queries = folder / "vectors.npy", folder / "queries.npy"
    builds = folder / "builds.json"
    if reuse:  # the data, indexes and build figures of an earlier run: only the searches
        built = json.loads(builds.read_text(encoding="utf-8"))
        sizes = {**built["sizes"], "nprobe": sizes["nprobe"], "resident_mib": sizes["resident_mib"]}
    else:
        log(f"generating {sizes['vectors']:,} vectors into {vectors}")
        generate(vectors, sizes["vectors"], seed=0)
        generate(queries, sizes["queries"], seed=1)
    options = {
        "name": "faiss-ivf-ondisk",
        "metric": "l2",
        "nlist": sizes["nlist"],
        "train_size": sizes["train_size"],
        "block_size": sizes["block_size"],
    }
    ondisk, sharded, memory = (
        folder / "index.ivfdisk",
        folder / "sharded.ivfdisk",
        folder / "memory.index",
    )
    results: dict[str, Any] = {
        "sizes": sizes,
        "dimension": DIMENSION,
        "k": K,
        "batch": BATCH,
        "rounds": rounds,
    }
    tasks = Tasks(folder / "work")
    build = {"kind": "build_ondisk", "vectors": str(vectors), "options": options}
    sharded_options = {**options, "shards": SHARDS}
    if reuse:
        results.update({key: built[key] for key in BUILDS})
    else:
        log("building the on-disk index")
        results["build_ondisk"] = tasks.run({**build, "out": str(ondisk)})
        log("building the same index in memory")
        results["build_memory"] = tasks.run(
            {
                "kind": "build_memory",
                "vectors": str(vectors),
                "trained": str(ondisk / "trained.index"),
                "block_size": sizes["block_size"],
                "out": str(memory),
            }
        )
        log(f"building the on-disk index in {SHARDS} shards")
        results["build_sharded"] = tasks.run(
            {**build, "options": sharded_options, "out": str(sharded)}
        )
        built = {"sizes": sizes, **{key: results[key] for key in BUILDS}}
        builds.write_text(json.dumps(built, indent=1), encoding="utf-8")
    searches = []
    plan = [("memory", memory, options, p) for p in sizes["nprobe"]]
    plan += [("on-disk", ondisk, options, p) for p in sizes["nprobe"]]
    resident = {**options, "resident_mib": sizes["resident_mib"]}
    plan += [
        (f"on-disk, resident_mib {sizes['resident_mib']}", ondisk, resident, p)
        for p in sizes["nprobe"]
    ]
    plan += [(f"on-disk, {SHARDS} shards", sharded, sharded_options, sizes["sharded_nprobe"])]
    # rounds over the whole plan, each search in a fresh process, so that a busy spell of a
    # shared machine does not fall on one row alone: the medians are reported
    for round_number in range(rounds):
        for number, (mode, path, mode_options, nprobe) in enumerate(plan):
            log(f"searching (round {round_number + 1} of {rounds}): {mode}, nprobe {nprobe}")
            drop_from_page_cache(path)
            answers = folder / f"answers-{number}.npy"
            task = {
                "kind": "search",
                "mode": "memory" if mode == "memory" else "on-disk",
                "path": str(path),
                "options": {**mode_options, "nprobe": nprobe},
                "queries": str(queries),
                "answers": str(answers),
            }
            result = tasks.run(task)
            if round_number == 0:
                result.update(mode=mode, nprobe=nprobe, answers=str(answers))
                result.update(qps_cold_rounds=[], qps_warm_rounds=[])
                searches.append(result)
            searches[number]["qps_cold_rounds"].append(result["qps_cold"])
            searches[number]["qps_warm_rounds"].append(result["qps_warm"])
    for search in searches:
        search["qps_cold"] = statistics.median(search["qps_cold_rounds"])
        search["qps_warm"] = statistics.median(search["qps_warm_rounds"])
    reference = {s["nprobe"]: np.load(s["answers"]) for s in searches if s["mode"] == "memory"}
    for search in searches:
        same = reference.get(search["nprobe"])
        search["same_ids_as_memory"] = (
            None if same is None else bool(np.array_equal(np.load(search["answers"]), same))
        )
        del search["answers"]
    results["search"] = searches
    results["memory_index_bytes"] = memory.stat().st_size
    results["ondisk_bytes"] = folder_bytes(ondisk)
    return results


class Tasks:
    """Runs each task in a fresh process of this script, one at a time; its result, a dict."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.started = 0

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        self.started += 1
        out = self.scratch / f"task-{self.started}.json"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        command = [sys.executable, __file__, "--task", json.dumps(task), "--task-out", str(out)]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if completed.returncode or not out.exists():
            raise SystemExit(f"task {task['kind']} failed:\n{completed.stderr[-3000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


def generate(path: Path, n: int, seed: int) -> None:
    """``n`` clustered float32 vectors into a memory-mapped ``.npy``, block by block."""
    centres = np.random.default_rng(12345).standard_normal((CLUSTERS, DIMENSION))
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIMENSION))
    for start in range(0, n, GENERATE_BLOCK):
        rows = min(GENERATE_BLOCK, n - start)
        picked = centres[rng.integers(0, CLUSTERS, rows)]
        out[start : start + rows] = picked + 0.5 * rng.standard_normal((rows, DIMENSION))
    out.flush()
    del out


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to drop an index's files from the page cache (flushed first)."""
    for file in [path] if path.is_file() else sorted(path.iterdir()):
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def folder_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.iterdir())


# ---------------------------------------------------------------------------------------------
# the tasks (each in a fresh process)
# ---------------------------------------------------------------------------------------------


def memory_now() -> dict[str, int]:
    """``VmHWM``, ``VmRSS``, ``RssAnon`` and ``RssFile`` of this process, in bytes."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


class AnonPeak(threading.Thread):
    """The largest ``RssAnon`` seen, sampled every 0.1 s (Linux keeps no peak of it)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            self.peak = max(self.peak, memory_now()["RssAnon"])

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return max(self.peak, memory_now()["RssAnon"])


def ondisk_retriever(options: dict[str, Any], dimension: int) -> Any:
    """The retriever, built from its own module: the plugin registry would import every
    built-in plugin, torch among them, and its memory would count in every figure."""
    from retro_platform.default_plugins.retrievers.faiss_ivf_ondisk import (
        FaissIVFOnDiskRetriever,
        OnDiskOptions,
    )

    settings = {key: value for key, value in options.items() if key != "name"}
    return FaissIVFOnDiskRetriever(OnDiskOptions(**settings), dimension)


def build_ondisk(task: dict[str, Any]) -> dict[str, Any]:
    from retro_platform.protocols import VectorRows

    vectors = np.load(task["vectors"], mmap_mode="r")
    retriever = ondisk_retriever(task["options"], vectors.shape[1])
    peak = AnonPeak()
    peak.start()
    started = time.perf_counter()
    retriever.build(VectorRows(vectors, np.arange(len(vectors))), np.arange(len(vectors)))
    built = time.perf_counter()
    retriever.save(Path(task["out"]))
    saved = time.perf_counter()
    return {
        "build_s": built - started,
        "save_s": saved - built,
        "peak_rss_anon": peak.stop(),
        "peak_rss": memory_now()["VmHWM"],
    }


def build_memory(task: dict[str, Any]) -> dict[str, Any]:
    import faiss

    vectors = np.load(task["vectors"], mmap_mode="r")
    index = faiss.read_index(task["trained"])  # the same trained quantizer, empty lists
    peak = AnonPeak()
    peak.start()
    started = time.perf_counter()
    for start in range(0, len(vectors), task["block_size"]):
        block = np.ascontiguousarray(vectors[start : start + task["block_size"]])
        index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
    built = time.perf_counter()
    faiss.write_index(index, task["out"])
    return {
        "build_s": built - started,
        "save_s": time.perf_counter() - built,
        "peak_rss_anon": peak.stop(),
        "peak_rss": memory_now()["VmHWM"],
    }


def search(task: dict[str, Any]) -> dict[str, Any]:
    queries = np.load(task["queries"])
    memory: dict[str, dict[str, int]] = {"start": memory_now()}
    started = time.perf_counter()
    if task["mode"] == "memory":
        import faiss

        index = faiss.read_index(task["path"])
        index.nprobe = task["options"]["nprobe"]

        def answer(batch: np.ndarray) -> np.ndarray:
            return index.search(batch, K)[1]
    else:
        retriever = ondisk_retriever(task["options"], queries.shape[1])
        retriever.load(Path(task["path"]))

        def answer(batch: np.ndarray) -> np.ndarray:
            return retriever.search(batch, K)[1]

    load_s = time.perf_counter() - started
    memory["loaded"] = memory_now()
    answer(queries[:FIRST_QUERIES])
    memory["first_queries"] = memory_now()
    passes = []
    found = np.zeros((len(queries), K), dtype=np.int64)
    for _ in ("cold", "warm"):
        started = time.perf_counter()
        for start in range(0, len(queries), BATCH):
            found[start : start + BATCH] = answer(queries[start : start + BATCH])
        passes.append(len(queries) / (time.perf_counter() - started))
    memory["end"] = memory_now()
    np.save(task["answers"], found)
    return {"load_s": load_s, "qps_cold": passes[0], "qps_warm": passes[1], "memory": memory}


HANDLERS = {"build_ondisk": build_ondisk, "build_memory": build_memory, "search": search}


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    from _common import fmt_ratio, format_bytes, markdown_table

    sizes = results["sizes"]
    index_bytes = results["memory_index_bytes"]
    print("# On-disk IVF index benchmark\n")
    print(
        f"{sizes['vectors']:,} synthetic vectors of {results['dimension']} dimensions "
        f"(memory-mapped .npy), IVF-Flat nlist {sizes['nlist']}, {sizes['queries']:,} queries "
        f"in batches of {results['batch']}, k = {results['k']}; queries/s are medians of "
        f"{results['rounds']} rounds. In-memory index: "
        f"{format_bytes(index_bytes)}; on-disk index folder: "
        f"{format_bytes(results['ondisk_bytes'])}.\n"
    )
    print("## Build\n")
    rows = []
    for name, key in (
        ("on-disk (faiss-ivf-ondisk)", "build_ondisk"),
        (f"on-disk, {SHARDS} shards", "build_sharded"),
        ("in memory (IndexIVFFlat, training reused)", "build_memory"),
    ):
        build = results[key]
        rows.append(
            [
                name,
                f"{build['build_s']:.1f}",
                f"{build['save_s']:.1f}",
                format_bytes(build["peak_rss"]),
                format_bytes(build["peak_rss_anon"]),
            ]
        )
    print(markdown_table(["index", "build s", "save s", "peak RSS (VmHWM)", "peak RssAnon"], rows))
    print("\n## Search\n")
    rows = []
    for found in results["search"]:
        end, first = found["memory"]["end"], found["memory"]["first_queries"]
        same = found["same_ids_as_memory"]
        rows.append(
            [
                found["mode"],
                str(found["nprobe"]),
                f"{found['qps_cold']:,.0f}",
                f"{found['qps_warm']:,.0f}",
                f"{found['load_s']:.2f}",
                format_bytes(found["memory"]["loaded"]["VmHWM"]),
                format_bytes(first["VmHWM"]),
                format_bytes(end["VmHWM"]),
                format_bytes(end["RssAnon"]),
                format_bytes(end["RssFile"]),
                fmt_ratio(end["VmHWM"], index_bytes),
                "—" if same is None else ("yes" if same else "no"),
            ]
        )
    print(
        markdown_table(
            [
                "index",
                "nprobe",
                "q/s cold",
                "q/s warm",
                "load s",
                "VmHWM loaded",
                f"VmHWM after {FIRST_QUERIES} q",
                "VmHWM end",
                "RssAnon end",
                "RssFile end",
                "VmHWM / index",
                "same ids",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
