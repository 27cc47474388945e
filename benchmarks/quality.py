"""Does retrieval help? The quality bar of issue 4, measured.

    python benchmarks/quality.py [--quick] [--steps N] [--seeds N] [--set KEY=VALUE ...]
                                 [--json PATH]

Runs ``examples/stdlib-ablation.toml`` (the quickstart's corpus, model and step budget,
trained once with retrieval and once as RETRO[off]) through ``retro-platform run`` in a
process of its own, with its store, run folders and MLflow database in
``benchmarks/results/quality/`` (reused by a second run of the benchmark: delete the folder for
a fresh measurement). Then reads the two runs back from MLflow and prints:

- validation bits per byte of each run, and the improvement of retrieval over the baseline
  (target: at least 10% lower bpb), with each run's training wall time (limit: 20 minutes);
- for the run with retrieval, bpb of the same weights with retrieval off;
- the leakage table of the run with retrieval: bpb by how much a validation chunk overlaps
  what it retrieved, so that the share of the gain that is copying is visible;
- the copy ceiling (:mod:`retro_platform.evaluation.copy_ceiling`): the share of validation
  tokens that continue a run of 8, 16 or 32 tokens found in a training document, the
  baseline's bpb if every such token cost nothing (the most that copying could take off),
  the losses of both runs on those tokens and on the rest, and the share of tokens copyable
  from the neighbours the model was actually given, with both runs' losses on them.

``--seeds N`` trains both runs with seeds 0 .. N-1 (a sweep over ``experiment.seed`` too) and
compares the medians: a gain smaller than the spread between seeds is noise. The leakage table
and the copy ceiling come from seed 0.

``--quick`` cuts the corpus to 6 files (half of them held out) and training to 20 steps: a
smoke test of the script.
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

EXAMPLE = REPO_ROOT / "examples" / "stdlib-ablation.toml"
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
        "--seeds",
        type=int,
        default=1,
        help="train each of the two runs with seeds 0 .. N-1 and compare medians (default 1)",
    )
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
        # half of 6 files held out, so that some are (the split hashes file names)
        sets |= {
            "corpus.max_files": 6,
            "retrieval.validation_fraction": 0.5,
            "train.steps": 20,
            "generate.samples": 1,
        }
    if args.steps:
        sets["train.steps"] = args.steps
    seeds = list(range(args.seeds))
    if len(seeds) > 1:
        sets["sweep.experiment.seed"] = json.dumps(seeds)
    command = [sys.executable, "-m", "retro_platform.cli", "run", str(EXAMPLE), "--no-progress"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    for setting in args.sets:
        command += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the report clean
    print("running:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    code = subprocess.run(command, env=env).returncode
    if code:
        print(f"retro-platform run failed (exit code {code}); see its error above", file=sys.stderr)
        return code
    wall = time.perf_counter() - started

    overrides = [f"{key}={value}" for key, value in sets.items()] + args.sets
    figures = collect(tracking, folder, wall, overrides, seeds)
    figures["copy_ceiling"] = copy_ceilings(overrides, folder, figures)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def collect(
    tracking: str, folder: Path, wall: float, overrides: list[str], seeds: list[int]
) -> dict[str, Any]:
    """The runs' figures, read back from MLflow and their run folders: one run with retrieval
    and one baseline per seed, each found as ``retro-platform run`` finds it, through the run
    folder of its configuration."""
    import statistics

    from mlflow import MlflowClient

    sys.path.insert(0, str(REPO_ROOT))
    from retro_platform.config import load_experiment
    from retro_platform.config.resolved import flatten_config, resolved_config
    from retro_platform.config.sweep import sweep_points
    from retro_platform.runner.run import DONE, run_folder

    client = MlflowClient(tracking_uri=tracking)
    runs = []
    for point in sweep_points(load_experiment(EXAMPLE, overrides)):
        experiment = point.experiment
        run_dir = run_folder(experiment, flatten_config(resolved_config(experiment)))
        run = client.get_run(json.loads((run_dir / DONE).read_text())["run_id"])
        retrieval, seed = experiment.train.retrieval, experiment.experiment.seed
        history = client.get_metric_history(run.info.run_id, "train/tokens_per_s")
        entry = {
            "retrieval": retrieval,
            "seed": seed,
            "run_id": run.info.run_id,
            "run_dir": str(run_dir),
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
        runs.append(entry)
    median = {
        kind: statistics.median(
            r["metrics"]["val/bpb"] for r in runs if r["retrieval"] == (kind == "retrieval")
        )
        for kind in ("retrieval", "baseline")
    }
    return {
        "wall_s": wall,
        "seeds": seeds,
        "runs": runs,
        "median_bpb": median,
        "gain": 1 - median["retrieval"] / median["baseline"],
    }


def first_pair(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run with retrieval and the baseline of the lowest seed."""
    seed = min(figures["seeds"])
    return {
        "retrieval" if run["retrieval"] else "baseline": run
        for run in figures["runs"]
        if run["seed"] == seed
    }


def copy_ceilings(
    overrides: list[str], folder: Path, figures: dict[str, Any]
) -> list[dict[str, Any]]:
    """The copy ceiling of the baseline's validation losses, and both runs' losses on the
    copyable tokens and the rest, from the final checkpoints of the lowest seed's runs."""

    sys.path.insert(0, str(REPO_ROOT))
    from retro_platform.config import load_experiment
    from retro_platform.evaluation.copy_ceiling import (
        copy_ceiling,
        training_ngrams,
        validation_losses,
    )
    from retro_platform.pipeline import run_index
    from retro_platform.runner.steps import prepare_training
    from retro_platform.store.database import open_store
    from retro_platform.training.checkpoint import load_checkpoint

    experiment = load_experiment(EXAMPLE, [*overrides, "train.neighbours=retrieved"])  # seed 0's data
    store = open_store(experiment.store.database_url, experiment.store.path)
    index = run_index(experiment, store, progress=False, log=lambda _: None)
    prepared = prepare_training(experiment, store, index, log=lambda _: None)
    data = prepared.data
    ngrams = training_ngrams(
        data.chunk_tokens, data.table, data.validation_documents, data.pad_id, (8, 16, 32)
    )
    tables = {}
    for name, run in first_pair(figures).items():
        state = load_checkpoint(Path(run["run_dir"]) / "checkpoint.pt")
        prepared.model.load_state_dict(state["model"])
        batches = data.batches("val", experiment.eval.batch_size, retrieval=True)
        measured = validation_losses(
            prepared.model, batches, pad_id=data.pad_id, retrieval=name == "retrieval"
        )
        tables[name] = copy_ceiling(measured, ngrams)
    return [
        {
            "n": base.n,
            "share": base.share,
            "baseline_bpb": base.bpb,
            "ceiling_bpb": base.ceiling_bpb,
            "reduction": base.reduction,
            "baseline_loss_copyable": base.loss_copyable,
            "retrieval_loss_copyable": retro.loss_copyable,
            "baseline_loss_other": base.loss_other,
            "retrieval_loss_other": retro.loss_other,
            "given_share": base.given_share,
            "given_ceiling_bpb": base.given_ceiling_bpb,
            "baseline_loss_given": base.loss_given,
            "retrieval_loss_given": retro.loss_given,
        }
        for base, retro in zip(tables["baseline"], tables["retrieval"], strict=True)
    ]


def report(figures: dict[str, Any]) -> str:
    runs = figures["runs"]
    rows = [
        [
            "RETRO, trained with retrieval"
            if run["retrieval"]
            else "the same model trained with retrieval off (baseline)",
            str(run["seed"]),
            f"{run['metrics']['val/bpb']:.4f}",
            f"{run['metrics']['val/bpb_retrieval_off']:.4f}" if run["retrieval"] else "",
            f"{run['run_s'] / 60:.1f}",
        ]
        for run in runs
    ]
    gain = figures["gain"]
    median = figures["median_bpb"]
    longest = max(run["run_s"] for run in runs)
    seeds = len(figures["seeds"])
    lines = [
        "# Quality bar: validation bits per byte, retrieval on vs off",
        "",
        markdown_table(["run", "seed", "val bpb", "same weights, retrieval off", "run min"], rows),
        "",
        (f"median over {seeds} seeds: " if seeds > 1 else "")
        + f"retrieval {median['retrieval']:.4f}, baseline {median['baseline']:.4f}; "
        f"bpb of retrieval vs the baseline: {-gain:+.1%} (target: at least {TARGET_GAIN:.0%} "
        f"lower): {'met' if gain >= TARGET_GAIN else 'NOT met'}; longest run "
        f"{longest / 60:.1f} min (limit {TARGET_RUN_S / 60:.0f})",
        "",
        "## Leakage: bpb by overlap with the retrieved neighbours (run with retrieval, first seed)",
        "",
    ]
    leakage = first_pair(figures)["retrieval"].get("leakage") or []
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
    lines += [
        "",
        "## Copy ceiling: what copying from the training documents could take off at most "
        "(first seed)",
        "",
        markdown_table(
            [
                "run of n tokens",
                "copyable from the training documents",
                "could take off",
                "copyable from the neighbours given",
                "could take off",
                "nats/token on those: baseline / RETRO",
                "on the rest: baseline / RETRO",
            ],
            [
                [
                    str(row["n"]),
                    f"{row['share']:.1%}",
                    f"{row['reduction']:.1%}",
                    f"{row['given_share']:.1%}",
                    f"{1 - row['given_ceiling_bpb'] / row['baseline_bpb']:.1%}",
                    f"{row['baseline_loss_given']:.3f} / {row['retrieval_loss_given']:.3f}",
                    f"{row['baseline_loss_other']:.3f} / {row['retrieval_loss_other']:.3f}",
                ]
                for row in figures.get("copy_ceiling", [])
            ],
        ),
        "",
        "Shares are of the validation tokens; 'could take off' is the baseline's bpb reduction if",
        "every such token cost nothing. 'The rest': tokens not copyable from the training",
        "documents at all.",
    ]
    return "\n".join(lines)


def _cell(value: str) -> str:
    return f"{float(value):.3f}" if value not in ("", None) else ""


if __name__ == "__main__":
    raise SystemExit(main())
