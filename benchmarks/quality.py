"""Does retrieval pay? The quality bar, measured on an ablation over ``train.neighbours``.

    python benchmarks/quality.py [--experiment PATH] [--seeds N] [--fractions F,F,...]
                                 [--fraction-seeds N] [--steps N] [--set KEY=VALUE ...]
                                 [--results DIR] [--json PATH] [--quick]

Runs the experiment (default ``examples/code-reuse.toml``) through ``retro-platform run`` in a
process of its own: its sweep over ``train.neighbours`` gives the arms, "retrieved" (RETRO),
"none" (the same model trained without retrieval, the baseline) and "shuffled" where the file
has it (random neighbours from other documents: a control for the extra parameters).
``--seeds N`` adds ``experiment.seed`` = 0 .. N-1 to the sweep. Every arm of a seed trains on
the same batches for the same steps and is measured on the same held-out documents.

The store, the run folders and the MLflow database live in ``benchmarks/results/quality/``
(``--results``); a finished run is found through its run folder and not run again, so
delete the folder for a fresh measurement. The report (markdown on stdout, saved beside the
runs as ``<experiment>.md`` and ``<experiment>.json``) has:

- every run's validation bpb (and, for runs that read neighbours, the same weights with
  retrieval off), its minutes from MLflow and its run id; the medians of each arm;
- the bar: the gain of retrieved over none (target: at least 10% lower bpb), the held-out
  documents (at least 20) and validation sequences (at least 256), the seed spread of each arm
  against the gain, shuffled against none (within 2%), minutes a run (at most 20);
- the leakage summary (:mod:`retro_platform.evaluation.comparison`, from each run's
  ``eval/chunks.npz``): the share of the gain from chunks overlapping their neighbours by
  more than 0.5, the gain on chunks overlapping by at most 0.25; and the first seed's
  comparison by overlap;
- the copy ceiling (:mod:`retro_platform.evaluation.copy_ceiling`) of the corpus at n = 8, 16,
  32 from the first seed's none and retrieved checkpoints, and the share of the ceiling at
  n = 16 that the gain reaches;
- with ``--fractions``, the retrieved and none arms trained on those shares of the database's
  documents (``train.document_fraction``) for the same steps, seed 0 (``--fraction-seeds N``:
  seeds 0 .. N-1, medians), and the gain at each.

``--quick`` cuts the corpus to 6 files (half of them held out, all the others trained on),
training to 4 steps of 2 sequences, validation to 8 sequences and leaves out the samples: a
smoke test of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, ensure_repo_on_path, markdown_table

EXAMPLE = REPO_ROOT / "examples" / "code-reuse.toml"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "quality"
ARMS = ("retrieved", "none", "shuffled")
NEIGHBOURS, SEED, FRACTION = "train.neighbours", "experiment.seed", "train.document_fraction"

TARGET_GAIN = 0.10
TARGET_HELD_OUT = 20
TARGET_SEQUENCES = 256
TARGET_SHUFFLED = 0.02
TARGET_RUN_S = 20 * 60
#: "Well below the gain": the largest arm's seed spread at most this share of the gain.
SPREAD_SHARE_OF_GAIN = 0.5
#: The run lengths of the copy ceiling, and the one the gain is set against.
CEILING_LENGTHS = (8, 16, 32)
CEILING_N = 16

QUICK = {
    "corpus.max_files": 6,
    "retrieval.validation_fraction": 0.5,  # some of 6 files held out (the split hashes names)
    "train.document_fraction": 1.0,  # a share of 3 files may be none
    "train.steps": 4,
    "train.batch_size": 2,
    "eval.sequences": 8,
    "generate.samples": 0,  # samples with autoretrieval cost more than the training here
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.results.resolve() / ("quick" if args.quick else "full")
    folder.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    sets: dict[str, Any] = {
        "store.path": folder / "store",
        "train.output": folder / "runs",
        "mlflow.tracking_uri": tracking,
        SEED: 0,  # seeds are 0 .. N-1 whatever the file says, so that fractions reuse seed 0
    }
    if args.quick:
        sets |= QUICK
    if args.steps:
        sets["train.steps"] = args.steps
    seeds = list(range(args.seeds))
    main_sets = {**sets, **({f"sweep.{SEED}": json.dumps(seeds)} if len(seeds) > 1 else {})}
    overrides = _overrides(main_sets, args.sets)

    ensure_repo_on_path()
    from retro_platform.config import load_experiment
    from retro_platform.errors import ConfigError

    try:  # before any work: a typo in --set is one line, not a failed sweep
        problem = check_grid(load_experiment(args.experiment, overrides).sweep.grid)
        problem = problem and f"{args.experiment}: {problem}"
    except ConfigError as error:
        problem = str(error)
    if problem:
        print(f"quality.py: {problem}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    code = run_sweep(args.experiment, overrides)
    if code:
        return code
    figures = collect(args.experiment, overrides, tracking, seeds)
    figures |= measure_data(args.experiment, overrides, figures, args.fractions)
    notes: list[str] = []
    failed = False
    if args.fractions:
        fractions = run_fractions(args, sets, tracking, notes)
        failed = fractions is None  # the main figures are reported all the same
        if failed:
            notes.append("the sweep over training fractions failed: see its error above")
        else:
            copyable = figures.get("copyable", {})
            for row in fractions:
                row["copyable"] = copyable.get(f"{row['fraction']:g}", math.nan)
            figures["fractions"] = fractions
    figures["notes"] = notes
    figures["wall_s"] = time.perf_counter() - started
    figures["bars"] = bars(figures)

    text = report(figures)
    print(text)
    stem = Path(args.experiment).stem
    (folder / f"{stem}.md").write_text(text + "\n", encoding="utf-8")
    for path in (folder / f"{stem}.json", args.json):
        if path is not None:
            path.write_text(json.dumps(figures, indent=2, default=str))
    print(f"\nreport saved to {folder / f'{stem}.md'} (figures: {folder / f'{stem}.json'})")
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--experiment", type=Path, default=EXAMPLE, help="experiment file (a sweep over arms)"
    )
    parser.add_argument("--quick", action="store_true", help="6 files, 4 steps: a smoke test")
    parser.add_argument("--steps", type=int, help="training steps (default: the experiment's)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for everything")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--seeds", type=int, default=1, help="train each arm with seeds 0 .. N-1 (default 1)"
    )
    parser.add_argument(
        "--fractions",
        type=_fractions,
        default=[],
        metavar="F,F,...",
        help="also train retrieved and none on these shares of the database, e.g. 1,0.5,0.25,0.125",
    )
    parser.add_argument(
        "--fraction-seeds",
        type=int,
        default=1,
        help="seeds 0 .. N-1 for each fraction (default 1: seed 0 only)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other key of the experiment, e.g. --set train.lr=5e-4 (repeatable)",
    )
    return parser.parse_args(argv)


def _fractions(text: str) -> list[float]:
    values = list(dict.fromkeys(float(part) for part in text.split(",") if part.strip()))
    if not values or not all(0 < value <= 1 for value in values):
        raise argparse.ArgumentTypeError("fractions must be numbers in (0, 1], e.g. 1,0.5,0.25")
    return values


def _overrides(sets: dict[str, Any], extra: list[str]) -> list[str]:
    """``--set`` strings: ours first, so that the user's own come last and win."""
    return [f"{key}={value}" for key, value in sets.items()] + list(extra)


def check_grid(grid: dict[str, Any]) -> str | None:
    """What is wrong with the sweep for this benchmark, or None: it must vary
    ``train.neighbours`` over retrieved and none at least, and nothing but the seed too."""
    arms = grid.get(NEIGHBOURS, [])
    if not {"retrieved", "none"} <= set(arms):
        return (
            f'the sweep must have {NEIGHBOURS} = ["retrieved", "none", ...] (it has '
            f"{arms or 'no such key'})"
        )
    others = sorted(set(grid) - {NEIGHBOURS, SEED})
    if others:
        return f"the sweep varies {', '.join(others)} too; only {NEIGHBOURS} and {SEED} may vary"
    return None


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


def run_sweep(experiment: Path, overrides: list[str]) -> int:
    """``retro-platform run`` in a process of its own (its output passes through)."""
    command = [sys.executable, "-m", "retro_platform.cli", "run", str(experiment), "--no-progress"]
    for setting in overrides:
        command += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    print("running:", " ".join(command[1:]), flush=True)
    code = subprocess.run(command, env=env).returncode
    if code:
        print(f"retro-platform run failed (exit code {code}); see its error above", file=sys.stderr)
    return code


def run_fractions(
    args: argparse.Namespace, sets: dict[str, Any], tracking: str, notes: list[str]
) -> list[dict[str, Any]] | None:
    """Retrieved and none at each training fraction, for the same steps: a sweep of its own.

    A point it shares with the main sweep (the experiment's own fraction) is that sweep's run,
    reused through its run folder. A fraction that leaves no document to train on is left out
    (said in ``notes``). None when the sweep failed.
    """
    counts = fraction_documents(args.experiment, _overrides(sets, args.sets), args.fractions)
    fractions = [fraction for fraction in args.fractions if counts[fraction][0] > 0]
    for fraction in sorted(set(args.fractions) - set(fractions), reverse=True):
        notes.append(f"fraction {fraction:g} left out: it trains on none of the documents")
    if not fractions:
        return []
    sweep = {
        f"sweep.{NEIGHBOURS}": json.dumps(["retrieved", "none"]),
        f"sweep.{FRACTION}": json.dumps(fractions),
    }
    if args.fraction_seeds > 1:
        sweep[f"sweep.{SEED}"] = json.dumps(list(range(args.fraction_seeds)))
    overrides = _overrides({**sets, **sweep}, args.sets)
    if run_sweep(args.experiment, overrides):
        return None
    runs = read_runs(args.experiment, overrides, tracking)
    rows = []
    for fraction in fractions:
        at = [run for run in runs if run["fraction"] == fraction]
        bpb = {arm: _median_bpb(at, arm) for arm in ("retrieved", "none")}
        rows.append(
            {
                "fraction": fraction,
                "training_documents": counts[fraction][0],
                "database_documents": counts[fraction][1],
                "retrieved_bpb": bpb["retrieved"],
                "none_bpb": bpb["none"],
                "gain": 1 - bpb["retrieved"] / bpb["none"],
                "seeds": sorted({run["seed"] for run in at}),
                "run_ids": {f"{run['arm']}/{run['seed']}": run["run_id"] for run in at},
            }
        )
    return rows


def fraction_documents(
    experiment_path: Path, overrides: list[str], fractions: list[float]
) -> dict[float, tuple[int, int]]:
    """For each fraction: the documents trained on and the documents of the database (every
    one not held out), from the store that the main sweep filled."""
    from retro_platform.config import load_experiment
    from retro_platform.corpus.chunk_table import training_documents
    from retro_platform.corpus.ingest import find_corpus_id
    from retro_platform.store.database import open_store

    experiment = load_experiment(experiment_path, overrides)
    store = open_store(experiment.store.database_url, experiment.store.path)
    corpus_id = find_corpus_id(experiment, store)
    held_out = experiment.retrieval.validation_fraction
    with store.session() as session:
        database = len(training_documents(session, corpus_id, held_out, 1.0))
        return {
            fraction: (len(training_documents(session, corpus_id, held_out, fraction)), database)
            for fraction in fractions
        }


# ---------------------------------------------------------------------------------------------
# reading the runs back
# ---------------------------------------------------------------------------------------------


def read_runs(experiment_path: Path, overrides: list[str], tracking: str) -> list[dict[str, Any]]:
    """Every point of the sweep, found as ``retro-platform run`` finds it (through the run
    folder of its configuration), with its figures from MLflow."""
    from mlflow import MlflowClient

    from retro_platform.config import load_experiment
    from retro_platform.config.resolved import flatten_config, resolved_config
    from retro_platform.config.sweep import sweep_points
    from retro_platform.runner.folder import DONE, run_folder

    client = MlflowClient(tracking_uri=tracking)
    runs = []
    for point in sweep_points(load_experiment(experiment_path, overrides)):
        experiment = point.experiment
        run_dir = run_folder(experiment, flatten_config(resolved_config(experiment)))
        run = client.get_run(json.loads((run_dir / DONE).read_text())["run_id"])
        ended = run.info.end_time
        runs.append(
            {
                "arm": experiment.train.neighbours,
                "seed": experiment.experiment.seed,
                "fraction": experiment.train.document_fraction,
                "label": point.label,
                "run_id": run.info.run_id,
                "parent_run_id": run.data.tags.get("mlflow.parentRunId"),
                "run_dir": str(run_dir),
                "steps": int(run.data.params["train.steps"]),
                "metrics": dict(run.data.metrics),
                # MLflow's start to end: training, evaluation and samples (stages excluded)
                "run_s": (ended - run.info.start_time) / 1000 if ended else None,
            }
        )
    return runs


def collect(
    experiment_path: Path, overrides: list[str], tracking: str, seeds: list[int]
) -> dict[str, Any]:
    """The runs of the main sweep, each arm's median and seed spread, and the gains."""
    runs = read_runs(experiment_path, overrides, tracking)
    arms = [arm for arm in ARMS if any(run["arm"] == arm for run in runs)]
    median = {arm: _median_bpb(runs, arm) for arm in arms}
    spread = {arm: _spread(runs, arm) for arm in arms}
    off = {  # the same weights with retrieval off, for the arms that read neighbours
        arm: statistics.median(run["metrics"]["val/bpb_retrieval_off"] for run in measured)
        for arm in arms
        if (measured := _of(runs, arm, off=True))
    }
    return {
        "experiment": str(experiment_path),
        "overrides": overrides,
        "tracking_uri": tracking,
        "seeds": seeds,
        "arms": arms,
        "runs": runs,
        "median_bpb": median,
        "median_bpb_retrieval_off": off,
        "spread": spread,
        "gain": 1 - median["retrieved"] / median["none"],
        "shuffled_vs_none": median["shuffled"] / median["none"] - 1 if "shuffled" in arms else None,
    }


def _of(runs: list[dict[str, Any]], arm: str, off: bool = False) -> list[dict[str, Any]]:
    return [
        run
        for run in runs
        if run["arm"] == arm and (not off or "val/bpb_retrieval_off" in run["metrics"])
    ]


def _median_bpb(runs: list[dict[str, Any]], arm: str) -> float:
    return statistics.median(run["metrics"]["val/bpb"] for run in _of(runs, arm))


def _spread(runs: list[dict[str, Any]], arm: str) -> float | None:
    """Max - min of an arm's bpb over seeds, as a share of its median (None: one seed)."""
    values = [run["metrics"]["val/bpb"] for run in _of(runs, arm)]
    if len(values) < 2:
        return None
    return (max(values) - min(values)) / statistics.median(values)


# ---------------------------------------------------------------------------------------------
# measuring: validation set, leakage, copy ceiling
# ---------------------------------------------------------------------------------------------


def measure_data(
    experiment_path: Path,
    overrides: list[str],
    figures: dict[str, Any],
    fractions: list[float] | None = None,
) -> dict[str, Any]:
    """What the runs were measured on (the loader's counts), the leakage summary of every
    seed, the copy ceiling from the first seed's checkpoints and, for ``fractions``, the
    validation text copyable from the documents each fraction trains on."""
    from retro_platform.config import load_experiment
    from retro_platform.config.sweep import sweep_points
    from retro_platform.pipeline import run_index
    from retro_platform.runner.steps import prepare_training
    from retro_platform.store.database import open_store

    points = sweep_points(load_experiment(experiment_path, overrides))
    first = min(figures["seeds"])
    retrieved = next(
        point.experiment
        for point in points
        if point.experiment.train.neighbours == "retrieved"
        and point.experiment.experiment.seed == first
    )
    store = open_store(retrieved.store.database_url, retrieved.store.path)
    index = run_index(retrieved, store, progress=False, log=lambda _: None)
    prepared = prepare_training(retrieved, store, index, log=lambda _: None)
    counts = prepared.data.counts()
    validation = {
        "held_out_documents": counts["val/documents"],
        "sequences": counts["val/sequences"],
        "tokens": counts["val/tokens"],
        "database_documents": counts["documents"] - counts["val/documents"],
        "training_documents": counts["train/documents"],
        "same_chunks_in_every_run": same_validation_chunks(figures["runs"]),
    }
    ceiling = copy_ceilings(retrieved, prepared, figures)
    measured = {
        "validation": validation,
        "leakage": leakage(points, figures["runs"], retrieved.eval.leakage_buckets),
        "copy_ceiling": ceiling,
        "ceiling_share": ceiling_share(ceiling, figures),
    }
    if fractions:
        # the whole database's share is the copy ceiling's, measured on the same sequences
        database = next(row["share"] for row in ceiling if row["n"] == CEILING_N)
        copyable = copyable_shares(retrieved, store, prepared.data, fractions)
        measured["copyable"] = {**copyable, "database": database}
    return measured


def same_validation_chunks(runs: list[dict[str, Any]]) -> bool | None:
    """Whether every run evaluated the same validation chunks (from its ``eval/chunks.npz``);
    None when a run kept no per-chunk figures (it finished before runs kept them)."""
    import numpy as np

    from retro_platform.evaluation.chunk_figures import ChunkFigures
    from retro_platform.runner.folder import CHUNK_FIGURES

    paths = [Path(run["run_dir"]) / CHUNK_FIGURES for run in runs]
    if not all(path.exists() for path in paths):
        return None
    rows = [np.sort(ChunkFigures.load(path).chunk_rows) for path in paths]
    return all(np.array_equal(rows[0], other) for other in rows[1:])


def leakage(points: list[Any], runs: list[dict[str, Any]], edges: tuple[float, ...]) -> dict:
    """Per seed, the gain split of retrieved over none and the comparison by overlap of all
    arms (:func:`retro_platform.runner.ablation.compare_points`), and the medians."""
    from retro_platform.evaluation.comparison import comparison_markdown
    from retro_platform.runner.ablation import compare_points
    from retro_platform.runner.folder import RunOutcome

    notes: list[str] = []
    seeds = []
    for seed in sorted({run["seed"] for run in runs}):
        pairs = [(p, r) for p, r in zip(points, runs, strict=True) if r["seed"] == seed]
        outcomes = [
            RunOutcome(r["arm"], r["run_id"], Path(r["run_dir"]), neighbours=r["arm"])
            for _, r in pairs
        ]
        made = compare_points([p for p, _ in pairs], outcomes, edges, log=notes.append)
        if made is None:
            continue
        comparison, splits = made
        (split,) = splits.values()  # the retrieved arm over the none arm of this seed
        seeds.append(
            {
                "seed": seed,
                **asdict(split),
                "comparison": {
                    "columns": list(comparison.columns),
                    "rows": [asdict(row) for row in comparison.rows],
                },
                "markdown": comparison_markdown(comparison),
            }
        )
    keys = ("high_share", "low_gain_bpb", "low_gain_relative")
    median = {key: _median_finite([entry[key] for entry in seeds]) for key in keys}
    return {"seeds": seeds, "median": median, "notes": notes}


def _median_finite(values: list[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return statistics.median(finite) if finite else math.nan


def copy_ceilings(experiment: Any, prepared: Any, figures: dict[str, Any]) -> list[dict]:
    """The copy ceiling of the none run's validation losses, and both runs' losses on the
    copyable tokens and the rest, from the final checkpoints of the first seed's runs."""
    from retro_platform.evaluation.copy_ceiling import (
        copy_ceiling,
        training_ngrams,
        validation_losses,
    )
    from retro_platform.training.checkpoint import checkpoint_path, load_checkpoint

    data = prepared.data
    ngrams = training_ngrams(
        data.chunk_tokens, data.table, data.validation_documents, data.pad_id, CEILING_LENGTHS
    )
    first = min(figures["seeds"])
    tables = {}
    for arm in ("none", "retrieved"):
        (run,) = [r for r in figures["runs"] if r["arm"] == arm and r["seed"] == first]
        state = load_checkpoint(checkpoint_path(run["run_dir"]))
        prepared.model.load_state_dict(state["model"])
        # the batches carry the neighbours either way: what none could have copied is asked too
        batches = data.batches("val", experiment.eval.batch_size, retrieval=True)
        measured = validation_losses(
            prepared.model, batches, pad_id=data.pad_id, retrieval=arm == "retrieved"
        )
        tables[arm] = copy_ceiling(measured, ngrams)
    return [
        {
            "n": none.n,
            "share": none.share,
            "none_bpb": none.bpb,
            "ceiling_bpb": none.ceiling_bpb,
            "reduction": none.reduction,
            "none_loss_copyable": none.loss_copyable,
            "retrieved_loss_copyable": retro.loss_copyable,
            "none_loss_other": none.loss_other,
            "retrieved_loss_other": retro.loss_other,
            "given_share": none.given_share,
            "given_ceiling_bpb": none.given_ceiling_bpb,
            "none_loss_given": none.loss_given,
            "retrieved_loss_given": retro.loss_given,
        }
        for none, retro in zip(tables["none"], tables["retrieved"], strict=True)
    ]


def copyable_shares(
    experiment: Any, store: Any, data: Any, fractions: list[float]
) -> dict[str, float]:
    """For each fraction (key ``f"{fraction:g}"``), the share of validation targets that end
    a :data:`CEILING_N`-token run found in one of the documents trained on at that fraction
    (the copy ceiling gives the same share for the whole database).

    Measured on the text alone, before any training: what the database offers against what
    the weights could have memorised. The validation sequences are the runs' own, and a
    fraction's documents are those its runs train on, so the figures explain the gains.
    """
    import numpy as np

    from retro_platform.corpus.chunk_table import training_documents
    from retro_platform.corpus.ingest import find_corpus_id
    from retro_platform.evaluation.copy_ceiling import copyable_targets, training_ngrams

    batches = data.batches("val", experiment.eval.batch_size, retrieval=False)
    sequences = np.concatenate([batch.tokens.numpy() for batch in batches])
    counted = sequences[:, 1:] != data.pad_id
    every = np.unique(data.table.document_ids)

    def share(source: np.ndarray) -> float:
        left_out = np.setdiff1d(every, source)
        (hashes,) = training_ngrams(
            data.chunk_tokens, data.table, left_out, data.pad_id, [CEILING_N]
        ).values()
        copyable = copyable_targets(sequences, hashes, CEILING_N, data.pad_id) & counted
        return float(copyable.sum() / max(counted.sum(), 1))

    corpus_id = find_corpus_id(experiment, store)
    held_out = experiment.retrieval.validation_fraction
    with store.session() as session:
        return {
            f"{fraction:g}": share(training_documents(session, corpus_id, held_out, fraction))
            for fraction in fractions
        }


def ceiling_share(ceiling: list[dict[str, Any]], figures: dict[str, Any]) -> dict[str, Any]:
    """The gain (of the medians, and of the first seed, whose runs the ceiling measured) as a
    share of what copying could take off at n = :data:`CEILING_N`."""
    row = next(row for row in ceiling if row["n"] == CEILING_N)
    first = min(figures["seeds"])
    bpb = {r["arm"]: r["metrics"]["val/bpb"] for r in figures["runs"] if r["seed"] == first}
    first_gain = 1 - bpb["retrieved"] / bpb["none"]
    reduction = row["reduction"]
    return {
        "n": CEILING_N,
        "reduction": reduction,
        "gain": figures["gain"],
        "share": _share_of(figures["gain"], reduction),
        "first_seed_gain": first_gain,
        "first_seed_share": _share_of(first_gain, reduction),
    }


def _share_of(gain: float, reduction: float) -> float:
    return gain / reduction if reduction > 0 else math.nan


# ---------------------------------------------------------------------------------------------
# the bar
# ---------------------------------------------------------------------------------------------


def bars(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per figure of the issue: target, measured, met (None: reported, no bar, or
    not measurable here)."""
    median, spread, gain = figures["median_bpb"], figures["spread"], figures["gain"]
    validation = figures["validation"]
    seeds = len(figures["seeds"])
    lines = [
        _bar(
            "gain of retrieved over none (medians)",
            f">= {TARGET_GAIN:.0%} lower bpb",
            f"{gain:.1%} ({median['retrieved']:.4f} vs {median['none']:.4f})",
            gain >= TARGET_GAIN,
        ),
        _bar(
            "held-out documents",
            f">= {TARGET_HELD_OUT}",
            str(validation["held_out_documents"]),
            validation["held_out_documents"] >= TARGET_HELD_OUT,
        ),
        _bar(
            "validation sequences",
            f">= {TARGET_SEQUENCES}",
            f"{validation['sequences']} ({validation['tokens']:,} tokens)",
            validation["sequences"] >= TARGET_SEQUENCES,
        ),
    ]
    measured = {arm: value for arm, value in spread.items() if value is not None}
    limit = SPREAD_SHARE_OF_GAIN * gain
    lines.append(
        _bar(
            f"seed spread (max - min over {seeds} seed{'s' * (seeds > 1)}, % of the median)",
            f"< {SPREAD_SHARE_OF_GAIN:g} x the gain ({limit:.1%})",
            ", ".join(f"{arm} {value:.1%}" for arm, value in measured.items())
            or "one seed: not measurable",
            max(measured.values()) < limit if measured else None,
        )
    )
    shuffled = figures["shuffled_vs_none"]
    lines.append(
        _bar(
            "shuffled vs none (medians, signed)",
            f"within +/-{TARGET_SHUFFLED:.0%}",
            "no shuffled arm" if shuffled is None else f"{shuffled:+.1%}",
            None if shuffled is None else abs(shuffled) <= TARGET_SHUFFLED,
        )
    )
    longest = max((run["run_s"] or 0.0) for run in figures["runs"])
    lines.append(
        _bar(
            "minutes a run (longest)",
            f"<= {TARGET_RUN_S / 60:.0f}",
            f"{longest / 60:.1f}",
            longest <= TARGET_RUN_S,
        )
    )
    split = figures["leakage"]["median"]
    lines.append(
        _bar(
            "leakage: share of the gain from overlap > 0.5 (median over seeds)",
            "reported",
            _percent(split["high_share"]),
            None,
        )
    )
    lines.append(
        _bar(
            "leakage: gain on chunks with overlap <= 0.25 (median over seeds)",
            "reported",
            f"{_number(split['low_gain_bpb'], '.4f')} bpb ({_percent(split['low_gain_relative'])})",
            None,
        )
    )
    share = figures["ceiling_share"]
    lines.append(
        _bar(
            f"share of the copy ceiling at n = {share['n']} reached by the gain",
            "reported",
            f"{_percent(share['share'])} ({gain:.1%} of {share['reduction']:.1%})",
            None,
        )
    )
    return lines


def _bar(figure: str, target: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"figure": figure, "target": target, "measured": measured, "met": met}


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def report(figures: dict[str, Any]) -> str:
    seeds = len(figures["seeds"])
    sections = [
        f"# Quality bar: {Path(figures['experiment']).name}, {seeds} seed{'s' * (seeds > 1)}",
        "",
        f"MLflow: {figures['tracking_uri']}; sweep run "
        f"{', '.join(sorted({r['parent_run_id'] or '-' for r in figures['runs']}))}",
        "",
        runs_section(figures),
        bars_section(figures),
        leakage_section(figures),
        ceiling_section(figures),
    ]
    if "fractions" in figures:
        sections.append(
            fractions_section(figures["fractions"], figures.get("copyable", {}).get("database"))
        )
    if figures["notes"]:
        sections += ["## Notes", "", *(f"- {note}" for note in figures["notes"]), ""]
    return "\n".join(sections).rstrip()


def runs_section(figures: dict[str, Any]) -> str:
    rows = []
    for arm in figures["arms"]:
        for run in _of(figures["runs"], arm):
            off = run["metrics"].get("val/bpb_retrieval_off")
            rows.append(
                [
                    arm,
                    str(run["seed"]),
                    f"{run['metrics']['val/bpb']:.4f}",
                    "" if off is None else f"{off:.4f}",
                    "" if run["run_s"] is None else f"{run['run_s'] / 60:.1f}",
                    run["run_id"],
                ]
            )
        off = figures["median_bpb_retrieval_off"].get(arm)
        spread = figures["spread"][arm]
        rows.append(
            [
                f"**{arm}: median**",
                "" if spread is None else f"spread {spread:.1%}",
                f"**{figures['median_bpb'][arm]:.4f}**",
                "" if off is None else f"{off:.4f}",
                "",
                "",
            ]
        )
    headers = ["arm", "seed", "val bpb", "same weights, retrieval off", "run min", "MLflow run"]
    return "\n".join(["## Runs", "", markdown_table(headers, rows), ""])


def bars_section(figures: dict[str, Any]) -> str:
    verdict = {True: "met", False: "NOT met", None: "-"}
    rows = [
        [line["figure"], line["target"], line["measured"], verdict[line["met"]]]
        for line in figures["bars"]
    ]
    validation = figures["validation"]
    same = {True: "yes", False: "NO", None: "unknown (a run kept no eval/chunks.npz)"}
    return "\n".join(
        [
            "## The bar",
            "",
            markdown_table(["figure", "target", "measured", ""], rows),
            "",
            f"Validation: the first {validation['sequences']} sequences of "
            f"{validation['held_out_documents']} held-out documents, the same chunks in every "
            f"run: {same[validation['same_chunks_in_every_run']]}. Training on "
            f"{validation['training_documents']} of the {validation['database_documents']} "
            "documents in the database.",
            "",
        ]
    )


def leakage_section(figures: dict[str, Any]) -> str:
    found = figures["leakage"]
    rows = [
        [
            str(entry["seed"]),
            f"{entry['gain_bits']:.0f}",
            _percent(entry["high_share"]),
            _number(entry["low_gain_bpb"], ".4f"),
            _percent(entry["low_gain_relative"]),
        ]
        for entry in found["seeds"]
    ]
    median = found["median"]
    rows.append(
        [
            "median",
            "",
            _percent(median["high_share"]),
            _number(median["low_gain_bpb"], ".4f"),
            _percent(median["low_gain_relative"]),
        ]
    )
    headers = [
        "seed",
        "bits saved (retrieved over none)",
        "share from overlap > 0.5",
        "bpb gain at overlap <= 0.25",
        "relative",
    ]
    lines = ["## Leakage: where the gain comes from", "", markdown_table(headers, rows), ""]
    if found["seeds"]:
        first = found["seeds"][0]
        lines += [f"Seed {first['seed']}, every arm by overlap:", "", first["markdown"]]
    lines += [f"- {note}" for note in found["notes"]]
    return "\n".join(lines)


def ceiling_section(figures: dict[str, Any]) -> str:
    rows = [
        [
            str(row["n"]),
            f"{row['share']:.1%}",
            f"{row['reduction']:.1%}",
            _percent(row["given_share"]),
            _percent(1 - row["given_ceiling_bpb"] / row["none_bpb"]),
            _losses(row["none_loss_given"], row["retrieved_loss_given"]),
            _losses(row["none_loss_other"], row["retrieved_loss_other"]),
        ]
        for row in figures["copy_ceiling"]
    ]
    headers = [
        "run of n tokens",
        "copyable from the database",
        "could take off",
        "copyable from the neighbours given",
        "could take off",
        "nats/token on those: none / retrieved",
        "on the rest: none / retrieved",
    ]
    share = figures["ceiling_share"]
    first = min(figures["seeds"])
    return "\n".join(
        [
            f"## Copy ceiling: what copying could take off at most (seed {first})",
            "",
            markdown_table(headers, rows),
            "",
            "Shares are of the validation tokens; 'could take off' is the none run's bpb "
            "reduction if every such token cost nothing. 'The rest': tokens not copyable from "
            "the database at all.",
            "",
            f"The gain reaches **{_percent(share['share'])}** of the copy ceiling at "
            f"n = {share['n']} (gain {share['gain']:.1%} between medians, ceiling "
            f"{share['reduction']:.1%}); seed {first} alone: {share['first_seed_gain']:.1%}, "
            f"{_percent(share['first_seed_share'])} of it.",
            "",
        ]
    )


def fractions_section(rows: list[dict[str, Any]], database_copyable: float | None) -> str:
    table = [
        [
            f"{row['fraction']:g}",
            str(row["training_documents"]),
            str(row["database_documents"]),
            _percent(row.get("copyable", math.nan)),
            f"{row['retrieved_bpb']:.4f}",
            f"{row['none_bpb']:.4f}",
            f"{row['gain']:.1%}",
        ]
        for row in rows
    ]
    headers = [
        "training fraction",
        "training documents",
        "database documents",
        f"copyable from training documents (n = {CEILING_N})",
        "retrieved bpb",
        "none bpb",
        "gain",
    ]
    seeds = sorted({seed for row in rows for seed in row["seeds"]})
    by_fraction = sorted(rows, key=lambda row: row["fraction"], reverse=True)
    gains = [row["gain"] for row in by_fraction]
    grows = all(later >= earlier for earlier, later in zip(gains, gains[1:], strict=False))
    database = (
        ""
        if database_copyable is None
        else f" {_percent(database_copyable)} of the validation targets end a {CEILING_N}-token "
        "run found in one document of the database; the column gives the same share for the "
        "documents trained on, measured on the text before any training."
    )
    return "\n".join(
        [
            "## The gain as the training share shrinks (equal steps, the same database)",
            "",
            markdown_table(headers, table),
            "",
            f"Seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"
            f"{' (medians)' if len(seeds) > 1 else ''}.{database} The paper finds RETRO's gain "
            "grows with the retrieval database (Borgeaud et al. 2022, Figure 1); here the "
            "database stays and the model trains on less of it, so that more of what validation "
            "needs is retrievable but not memorised. Here the gain "
            + ("grows" if grows else "does not grow steadily")
            + " as the fraction shrinks.",
            "",
        ]
    )


def _losses(none: float, retrieved: float) -> str:
    """Mean nats of both runs on a set of tokens ("-" for an empty set)."""
    return f"{_number(none, '.3f')} / {_number(retrieved, '.3f')}"


def _percent(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1%}"


def _number(value: float, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


if __name__ == "__main__":
    raise SystemExit(main())
