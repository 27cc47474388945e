"""Index update benchmark: bringing a built index up to a changed corpus (remove the vectors of
documents that are gone, add the new ones) against rebuilding it, for each retriever that can.

    python benchmarks/index_update.py [--quick] [--vectors N] [--changed 0.1] [--repeats 3]
                                      [--json PATH]

1. N clustered float32 vectors of 64 dimensions (``retro_platform.testing.clustered_vectors``)
   under large scattered ids, as chunk ids are; an index of each retriever is built over them
   through its plugin and saved.
2. **update**, as ``retro-platform index`` does after ``ingest`` changed the corpus: a fresh
   instance loads the saved index, removes a fraction (``--changed``) of the vectors, spread
   over the whole index, adds as many new ones, and saves the result.
3. **rebuild**, the obvious alternative: a fresh instance builds over the same final vectors
   (training included) and saves.
   Both end with the same ids (checked).
4. **remove alone**, the step this benchmark was written for: the flat index's ``remove`` as it
   is (Faiss ``IDSelectorBatch``, a hash set) against the selector it used before
   (``IDSelectorArray``, which scans its array for every stored vector).

Medians of ``--repeats`` rounds, each retriever in this one process; ratios are rebuild time
over update time. JSON goes to ``benchmarks/results/index_update.json`` (with ``--quick``,
only where ``--json`` says).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    REPO_ROOT,
    cpu_model,
    ensure_repo_on_path,
    fmt_ratio,
    fmt_seconds,
    log,
    markdown_table,
    median,
)

ensure_repo_on_path()
os.environ.setdefault("RETRO_PLATFORM_LOAD_PLUGINS", "")  # built-ins only

import faiss  # noqa: E402

from retro_platform.plugins import build_plugin  # noqa: E402
from retro_platform.testing.retriever import clustered_vectors, far_ids  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "index_update.json"
DIMENSION = 64
#: The retrievers that update in place (faiss-hnsw cannot remove: the core rebuilds it).
RETRIEVERS = {
    "faiss-flat": {},
    "faiss-ivfpq": {"nbits": 8},
    "faiss-ivf-ondisk": {},
}
FULL = {"vectors": 500_000, "repeats": 3}
QUICK = {"vectors": 20_000, "repeats": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="20,000 vectors, 1 round: a smoke test"
    )
    parser.add_argument("--vectors", type=int, default=None, help="vectors in the first index")
    parser.add_argument(
        "--changed", type=float, default=0.1, help="fraction removed, and as many added"
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 3)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"default: {RESULTS.relative_to(REPO_ROOT)}; none with --quick (a smoke test "
        "leaves the committed figures alone)",
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.vectors = args.vectors or preset["vectors"]
    args.repeats = args.repeats or preset["repeats"]
    if args.json is None and not args.quick:
        args.json = RESULTS
    if not 0 < args.changed < 1:
        parser.error("--changed must be between 0 and 1")
    return args


def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def one_round(name: str, options: dict, data: dict, folder: Path) -> dict[str, float]:
    """Build and save; then the update and the rebuild, each from a fresh instance."""

    def fresh() -> Any:
        return build_plugin("retrievers", {"name": name, **options}, DIMENSION)

    suffix = fresh().file_suffix
    first, updated, rebuilt = (
        folder / f"{stage}{suffix}" for stage in ("first", "updated", "rebuilt")
    )
    built = fresh()
    built.build(data["vectors"], data["ids"])
    built.save(first)
    del built

    def update() -> Any:
        index = fresh()
        index.load(first)
        index.remove(data["gone"])
        index.add(data["new_vectors"], data["new_ids"])
        index.save(updated)
        return index

    def rebuild() -> Any:
        index = fresh()
        index.build(data["final_vectors"], data["final_ids"])
        index.save(rebuilt)
        return index

    update_s, by_update = timed(update)
    rebuild_s, by_rebuild = timed(rebuild)
    expected = np.sort(data["final_ids"])
    for index in (by_update, by_rebuild):
        if not np.array_equal(np.sort(index.stored_ids()), expected):
            raise SystemExit(f"{name}: the updated and rebuilt indexes hold different ids")
    for path in (first, updated, rebuilt):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return {"update_s": update_s, "rebuild_s": rebuild_s}


def remove_selectors(data: dict) -> dict[str, float]:
    """Seconds for a flat index to remove the changed fraction, with each Faiss selector."""
    n = len(data["vectors"])
    positions = np.sort(np.random.default_rng(1).choice(n, len(data["gone"]), replace=False))
    seconds = {}
    for selector in ("IDSelectorBatch", "IDSelectorArray"):
        index = faiss.IndexFlatIP(DIMENSION)
        index.add(data["vectors"])
        chosen = getattr(faiss, selector)(positions.astype(np.int64))
        seconds[selector], removed = timed(lambda: index.remove_ids(chosen))  # noqa: B023
        assert removed == len(positions)
    return seconds


def make_data(n: int, changed: float) -> dict[str, np.ndarray]:
    vectors, ids = clustered_vectors(n, DIMENSION, seed=0), far_ids(n, seed=0)
    count = int(round(n * changed))
    gone_rows = np.random.default_rng(2).choice(n, count, replace=False)
    kept = np.ones(n, dtype=bool)
    kept[gone_rows] = False
    new_vectors, new_ids = clustered_vectors(count, DIMENSION, seed=3), far_ids(count, 4) + 2**52
    return {
        "vectors": vectors,
        "ids": ids,
        "gone": ids[gone_rows],
        "new_vectors": new_vectors,
        "new_ids": new_ids,
        "final_vectors": np.concatenate([vectors[kept], new_vectors]),
        "final_ids": np.concatenate([ids[kept], new_ids]),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = make_data(args.vectors, args.changed)
    changed = len(data["gone"])
    log(f"{args.vectors:,} vectors of {DIMENSION} dimensions; {changed:,} removed and added")
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in RETRIEVERS}
    selectors: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="index-update-") as folder:
        for repeat in range(args.repeats):
            for name, options in RETRIEVERS.items():
                rounds[name].append(one_round(name, options, data, Path(folder)))
                figures = rounds[name][-1]
                log(
                    f"round {repeat + 1}/{args.repeats} {name}: update "
                    f"{figures['update_s']:.2f} s, rebuild {figures['rebuild_s']:.2f} s"
                )
            selectors.append(remove_selectors(data))

    summary = {
        name: {
            "update_s": median([r["update_s"] for r in results]),
            "rebuild_s": median([r["rebuild_s"] for r in results]),
        }
        for name, results in rounds.items()
    }
    selector_summary = {
        name: median([r[name] for r in selectors])
        for name in ("IDSelectorBatch", "IDSelectorArray")
    }
    rows = [
        [
            name,
            fmt_seconds(figures["update_s"]),
            fmt_seconds(figures["rebuild_s"]),
            fmt_ratio(figures["rebuild_s"], figures["update_s"]),
        ]
        for name, figures in summary.items()
    ]
    print("# Index update benchmark\n")
    print(
        f"{args.vectors:,} vectors of {DIMENSION} dimensions; {changed:,} removed and "
        f"{changed:,} added; medians of {args.repeats}; {cpu_model()}\n"
    )
    print(
        markdown_table(
            ["retriever", "update (load, remove, add, save)", "rebuild", "rebuild / update"], rows
        )
    )
    print()
    print(
        markdown_table(
            ["flat index: remove", "seconds", "against IDSelectorBatch"],
            [
                [
                    name,
                    fmt_seconds(seconds),
                    fmt_ratio(seconds, selector_summary["IDSelectorBatch"]),
                ]
                for name, seconds in selector_summary.items()
            ],
        )
    )
    if args.json is None:
        return
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "vectors": args.vectors,
                "dimension": DIMENSION,
                "changed": changed,
                "repeats": args.repeats,
                "summary": summary,
                "rounds": rounds,
                "remove_selectors": selector_summary,
                "cpu": cpu_model(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
