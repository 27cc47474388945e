"""The retrieval benchmark's report: the issue's targets, the tables, the summary and the
machine facts of its header."""

from __future__ import annotations

import os
from typing import Any

from _common import (
    cpu_model,
    fmt_number,
    fmt_ratio,
    fmt_seconds,
    format_bytes,
    markdown_table,
    median,
    package_versions,
)
from retrieval_tasks import (
    INGEST_CHUNK_BYTES,
    INGEST_CHUNKS_PER_DOC,
    KS,
    MIN_TIMED_S,
    RETRIEVERS,
    SCANN_EXTRA_REORDER,
    SEED,
    SLOW_CALL_S,
    SLOW_REPEATS,
    SWEEP_K,
    SWEEP_RETRIEVERS,
    SWEEPS,
    SYNTHETIC_CLUSTERS,
    SYNTHETIC_DIM,
    SYNTHETIC_POINT_NOISE,
    SYNTHETIC_SUB_NOISE,
    SYNTHETIC_SUBCLUSTERS,
    TIE_EPSILON,
)

#: The issue's targets.
TARGET_SEARCH_RATIO = 0.9
TARGET_RECALL = {"faiss-hnsw": 0.95, "faiss-ivfpq": 0.90}
TARGET_EMBED_RATIO = 0.95
TARGET_EMBED_RECALL = 0.95
TARGET_PIPELINE_S = 600.0
TARGET_INGEST_RSS = 2 * 10**9


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
    if 6 in items and results.get("sweep") is not None:
        sweep = results["sweep"]
        print("\n## 6. Recall@10 against queries/s (faiss-flat, faiss-ivfpq, faiss-hnsw, scann)\n")
        print(sweep_build_table(sweep))
        print()
        print(sweep_summary_table(sweep))
        print()
        print(sweep_summary_table(sweep, "cpu_qps"))
        print()
        print(sweep_table(sweep))
        knobs = ", ".join(
            f"{name}: {SWEEPS[name][0]}" for name in SWEEP_RETRIEVERS if SWEEPS[name][0]
        )
        print(
            "\nEach retriever is built once through its plugin at default options and saved; "
            "each point loads that file into the plugin configured with one value of its "
            f"search-time knob ({knobs}; scann also at reorder {SCANN_EXTRA_REORDER}) and "
            f"searches all queries at k = {SWEEP_K}. Queries/s: the median over the runs, "
            "each run repeating the call for at least "
            f"{MIN_TIMED_S / 10 if results['quick'] else MIN_TIMED_S:g} s; queries per CPU-s: "
            "the same by the worker's CPU time (all threads), which other work on the machine "
            "disturbs less than the wall clock. Recall is tie-aware against faiss-flat's "
            "answers, as in item 2." + (f" Plot: {results['plot']}." if results.get("plot") else "")
        )
    summary = summary_rows(results)
    if summary:  # item 6 has no target
        print("\n## Summary: the issue's targets\n")
        print(markdown_table(["target", "measured", "target", "met?"], summary))
    for note in results.get("notes", []):
        print(f"- {note}")


# ---------------------------------------------------------------------------------------------
# item 6: recall against queries/s
# ---------------------------------------------------------------------------------------------

#: Recall levels at which item 6's summary gives each retriever's best queries/s.
RECALL_LEVELS = (0.9, 0.95, 0.99)


def sweep_points(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The points of one sweep result with their queries/s (median) and a label."""
    points = []
    for point in result.get("points") or []:
        seconds = median(point["times"])
        cpu_seconds = median(point["cpu_times"])
        setting = point["setting"]
        points.append(
            {
                **point,
                "qps": result["queries"] / seconds if seconds else None,
                "cpu_qps": result["queries"] / cpu_seconds if cpu_seconds else None,
                "label": ", ".join(f"{key} {value}" for key, value in setting.items()) or "exact",
                "series": series_name(result["retriever"], setting),
            }
        )
    return points


def series_name(retriever: str, setting: dict[str, Any]) -> str:
    """The plot line a point belongs to: the retriever, or scann at its larger ``reorder``."""
    return f"{retriever}, reorder {setting['reorder']}" if "reorder" in setting else retriever


def pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both recall and queries/s, by rising recall."""
    ranked = sorted(
        (p for p in points if p["recall"] is not None and p["qps"]),
        key=lambda p: (-p["recall"], -p["qps"]),
    )
    front, best = [], 0.0
    for point in ranked:  # from the highest recall down: keep each new best throughput
        if point["qps"] > best:
            front.append(point)
            best = point["qps"]
    return front[::-1]


def sweep_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        label = dataset_label(result["dataset"], result)
        if result.get("status") != "ok":
            rows.append([label, result["retriever"]] + ["—"] * 5 + [result.get("detail", "")])
            continue
        for point in sweep_points(result):
            rows.append(
                [
                    label,
                    point["series"],
                    point["label"],
                    "—" if point["recall"] is None else f"{point['recall']:.3f}",
                    fmt_number(point["qps"], digits=0),
                    fmt_number(point["cpu_qps"], digits=0),
                    "—" if point["missed"] is None else f"{100 * point['missed']:.1f}%",
                    f"{len(point['times'])} × {point['calls']}",
                ]
            )
    return markdown_table(
        [
            "vectors",
            "retriever",
            "search setting",
            f"recall@{SWEEP_K}",
            "queries/s",
            "queries per CPU-s",
            "queries with no hit",
            "runs × calls",
        ],
        rows,
    )


def sweep_build_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        if result.get("status") != "ok":
            continue
        knob = SWEEPS[result["retriever"]][0]
        default = result["options"].get(knob)
        if result["retriever"] == "scann" and default is None and result.get("num_leaves"):
            default = f"unset (→ {max(8, -(-result['num_leaves'] // 5))})"
        rows.append(
            [
                dataset_label(result["dataset"], result),
                result["retriever"],
                result["index"],
                fmt_seconds(result["build_s"]),
                format_bytes(result["file_bytes"]),
                format_bytes(result["rss_growth"]),
                f"{knob} {default}" if knob else "—",
                str(result["threads"]),
            ]
        )
    return markdown_table(
        [
            "vectors",
            "retriever",
            "index (default build options)",
            "build s",
            "index file",
            "RSS growth",
            "default search setting",
            "search threads",
        ],
        rows,
    )


def best_at_recall(
    points: list[dict[str, Any]], level: float, rate: str = "qps"
) -> dict[str, Any] | None:
    """The fastest point (by ``rate``: "qps" or "cpu_qps") whose recall reaches ``level``."""
    good = [p for p in points if p["recall"] is not None and p["recall"] >= level and p[rate]]
    return max(good, key=lambda p: p[rate], default=None)


def sweep_summary_table(results: list[dict[str, Any]], rate: str = "qps") -> str:
    """The fastest point of each retriever at each of :data:`RECALL_LEVELS`, by wall clock
    (``rate="qps"``) or by the worker's CPU time (``"cpu_qps"``)."""
    rows = []
    for result in results:
        if result.get("status") != "ok":
            continue
        by_series: dict[str, list[dict[str, Any]]] = {}
        for point in sweep_points(result):
            by_series.setdefault(point["series"], []).append(point)
        for series, points in by_series.items():
            cells = []
            for level in RECALL_LEVELS:
                best = best_at_recall(points, level, rate)
                cells.append(
                    "not reached"
                    if best is None
                    else f"{fmt_number(best[rate], digits=0)} ({best['label']}, "
                    f"{best['recall']:.3f})"
                )
            top = max((p["recall"] for p in points if p["recall"] is not None), default=None)
            rows.append(
                [
                    dataset_label(result["dataset"], result),
                    series,
                    *cells,
                    "—" if top is None else f"{top:.3f}",
                ]
            )
    return markdown_table(
        [
            "vectors",
            "retriever",
            *(
                f"best {'q/s' if rate == 'qps' else 'queries per CPU-s'} at recall ≥ {level}"
                for level in RECALL_LEVELS
            ),
            "highest recall",
        ],
        rows,
    )


def plot_recall_vs_qps(results: dict[str, Any], path: Any) -> None:
    """Item 6's figure: a panel per dataset, recall@10 on x, queries/s (log) on y, a line per
    retriever through its Pareto front and a marker for every point (ann-benchmarks' style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in results.get("sweep") or [] if r.get("status") == "ok"]
    datasets = list(dict.fromkeys(r["dataset"] for r in sweep))
    if not datasets:
        return
    figure, axes = plt.subplots(1, len(datasets), figsize=(6.4 * len(datasets), 4.8), squeeze=False)
    styles = {
        "faiss-flat": ("black", "*"),
        "faiss-ivfpq": ("tab:blue", "s"),
        "faiss-hnsw": ("tab:green", "^"),
        "scann": ("tab:red", "o"),
    }
    for axis, dataset in zip(axes[0], datasets, strict=True):
        for result in (r for r in sweep if r["dataset"] == dataset):
            by_series: dict[str, list[dict[str, Any]]] = {}
            for point in sweep_points(result):
                by_series.setdefault(point["series"], []).append(point)
            for series, points in by_series.items():
                colour, marker = styles.get(result["retriever"], ("grey", "x"))
                dashed = series != result["retriever"]
                front = pareto(points)
                axis.plot(
                    [p["recall"] for p in front],
                    [p["qps"] for p in front],
                    linestyle="--" if dashed else "-",
                    color=colour,
                    marker=marker,
                    markerfacecolor="none" if dashed else colour,
                    label=series,
                )
                rest = [p for p in points if p not in front and p["recall"] is not None]
                axis.scatter(
                    [p["recall"] for p in rest],
                    [p["qps"] for p in rest],
                    color=colour,
                    marker=marker,
                    alpha=0.3,
                )
            label = dataset_label(dataset, result)
        axis.set_yscale("log")
        axis.set_xlabel(f"recall@{SWEEP_K} (tie-aware, against faiss-flat)")
        axis.set_ylabel(f"queries/s ({result['queries']:,} queries per call, median)")
        axis.set_title(f"{label} vectors")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    threads = results["machine"].get("affinity")
    figure.suptitle(
        f"Recall@{SWEEP_K} against queries/s on {threads} shared cores (up and right: better)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    versions = package_versions()
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
