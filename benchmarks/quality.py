"""Does retrieval help? The quality bar of issue 4, measured.

    python benchmarks/quality.py [--quick] [--steps N] [--set KEY=VALUE ...] [--json PATH]

Runs ``examples/retrieval-ablation.toml`` (the quickstart's corpus, model and step budget,
trained once with retrieval and once as RETRO[off]) through ``retro-platform run`` in a
process of its own, with its store, run folders and MLflow database in
``benchmarks/results/quality/`` (reused by a second run of the benchmark: delete the folder for
a fresh measurement). Then reads the two runs back from MLflow and prints:

- validation bits per byte of each run, and the improvement of retrieval over the baseline
  (target: at least 10% lower bpb), with each run's training wall time (limit: 20 minutes);
- for the run with retrieval, bpb of the same weights with retrieval off;
- the leakage table of the run with retrieval: bpb by how much a validation chunk overlaps
  what it retrieved, so that the share of the gain that is copying is visible.

``--quick`` cuts the corpus to 6 files and training to 20 steps: a smoke test of the script.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, markdown_table

EXAMPLE = REPO_ROOT / "examples" / "retrieval-ablation.toml"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "quality"
TARGET_GAIN = 0.10
TARGET_RUN_S = 20 * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 files, 20 steps: a smoke test")
    parser.add_argument("--steps", type=int, help="training steps (default: the example's)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for everything")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other key of the example, e.g. --set corpus.max_files=0 (repeatable)",
    )
    args = parser.parse_args(argv)

    folder = args.results.resolve() / ("quick" if args.quick else "full")
    folder.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    sets = {
        "store.path": folder / "store",
        "train.output": folder / "runs",
        "mlflow.tracking_uri": tracking,
    }
    if args.quick:
        sets |= {"corpus.max_files": 6, "train.steps": 20, "generate.samples": 1}
    if args.steps:
        sets["train.steps"] = args.steps
    command = [sys.executable, "-m", "retro_platform.cli", "run", str(EXAMPLE), "--no-progress"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    for setting in args.sets:
        command += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    print("running:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    wall = time.perf_counter() - started

    figures = collect(tracking, folder, wall)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def collect(tracking: str, folder: Path, wall: float) -> dict[str, Any]:
    """The two runs' figures, read back from MLflow and their run folders."""
    from mlflow import MlflowClient

    sys.path.insert(0, str(REPO_ROOT))
    from retro_platform.config import load_experiment

    client = MlflowClient(tracking_uri=tracking)
    name = load_experiment(EXAMPLE).experiment.name
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    figures: dict[str, Any] = {"wall_s": wall, "runs": {}}
    for run in children:
        retrieval = run.data.params["train.retrieval"] == "true"
        history = client.get_metric_history(run.info.run_id, "train/tokens_per_s")
        entry = {
            "run_id": run.info.run_id,
            "steps": int(run.data.params["train.steps"]),
            "metrics": dict(run.data.metrics),
            "tokens_per_s": [m.value for m in history],
            "run_s": (run.info.end_time - run.info.start_time) / 1000
            if run.info.end_time
            else None,
        }
        if retrieval:
            local = client.download_artifacts(run.info.run_id, "leakage", str(folder / "dl"))
            with open(Path(local) / "leakage.csv", newline="") as handle:
                entry["leakage"] = list(csv.DictReader(handle))
        figures["runs"]["retrieval" if retrieval else "baseline"] = entry
    return figures


def report(figures: dict[str, Any]) -> str:
    runs = figures["runs"]
    on, off = runs["retrieval"], runs["baseline"]
    bpb_on, bpb_base = on["metrics"]["val/bpb"], off["metrics"]["val/bpb"]
    gain = 1 - bpb_on / bpb_base
    rows = [
        [
            "RETRO, trained with retrieval",
            f"{bpb_on:.4f}",
            f"{on['metrics'].get('val/bpb_retrieval_off', float('nan')):.4f}",
            f"{on['run_s'] / 60:.1f}",
        ],
        [
            "the same model trained with retrieval off (baseline)",
            f"{bpb_base:.4f}",
            "",
            f"{off['run_s'] / 60:.1f}",
        ],
    ]
    lines = [
        "# Quality bar: validation bits per byte, retrieval on vs off",
        "",
        markdown_table(["run", "val bpb", "same weights, retrieval off", "run min"], rows),
        "",
        f"bpb of retrieval vs the baseline: {-gain:+.1%} (target: at least {TARGET_GAIN:.0%} "
        f"lower): {'met' if gain >= TARGET_GAIN else 'NOT met'}; longest run "
        f"{max(on['run_s'], off['run_s']) / 60:.1f} min (limit {TARGET_RUN_S / 60:.0f})",
        "",
        "## Leakage: bpb by overlap with the retrieved neighbours (run with retrieval)",
        "",
    ]
    leakage = on.get("leakage") or []
    lines.append(
        markdown_table(
            ["overlap", "chunks", "share", "bpb", "bpb retrieval off", "gain"],
            [
                [
                    row["bucket"],
                    row["chunks"],
                    f"{float(row['share']):.1%}",
                    _cell(row["bpb"]),
                    _cell(row["bpb_off"]),
                    _cell(row["gain"]),
                ]
                for row in leakage
            ],
        )
    )
    return "\n".join(lines)


def _cell(value: str) -> str:
    return f"{float(value):.3f}" if value not in ("", None) else ""


if __name__ == "__main__":
    raise SystemExit(main())
