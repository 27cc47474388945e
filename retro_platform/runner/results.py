"""What a result says in the MLflow UI: each run's description (shown on the run's page), and
a sweep parent's summary of its points.

A run's description states its validation bits per byte, and against what: the same weights
without retrieval (``val/bpb_retrieval_off``) and, in a sweep, the point trained without
retrieval that has the same other swept values. A sweep's parent names its best point (the
lowest ``val/bpb``: the metric ``best/val_bpb``, the tags ``retro.best_run`` and
``retro.best_run_name``), keeps a table and a bar chart of every point among its artifacts, and
says all that in its description, followed by the comparison by neighbour overlap where the
sweep made one.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retro_platform.atomic import atomic_destination, write_text_atomic
from retro_platform.config.sweep import SweepPoint
from retro_platform.evaluation.comparison import plot_runs
from retro_platform.runner.ablation import matching_point
from retro_platform.runner.folder import RunOutcome
from retro_platform.text_table import markdown_table
from retro_platform.tracking.listing import BPB_METRIC, BPB_OFF_METRIC, FINAL_METRICS
from retro_platform.tracking.params import MAX_TAG_VALUE
from retro_platform.tracking.run import set_description

#: What a sweep parent logs about its best point (the lowest ``val/bpb``).
BEST_METRIC = "best/val_bpb"
BEST_RUN_TAG = "retro.best_run"
BEST_RUN_NAME_TAG = "retro.best_run_name"
#: The table and chart of every point of a sweep, among its parent's artifacts.
POINTS_CSV = "comparison/points.csv"
POINTS_MARKDOWN = "comparison/points.md"
POINTS_PNG = "comparison/points.png"

_KIND = {
    "retrieved": ("retrieval on", "it"),
    "none": ("trained without retrieval", ""),
    "shuffled": ("shuffled neighbours", "them"),
}


def run_description(outcome: RunOutcome, baseline: RunOutcome | None = None) -> str | None:
    """``retrieval on: val bpb 1.0040 (-0.5% vs trained without, neighbours=none: 1.0090;
    -0.3% vs the same weights without it: 1.0070)``; None for a run without ``val/bpb``.

    ``baseline``: the run trained without retrieval to compare with (a sweep's point).
    """
    bpb = outcome.metrics.get(BPB_METRIC)
    if bpb is None or not math.isfinite(bpb):
        return None
    kind, pronoun = _KIND.get(outcome.neighbours, (outcome.neighbours, "them"))
    against = []
    if baseline is not None and (base := baseline.metrics.get(BPB_METRIC)) is not None:
        against.append(f"{_change(bpb, base)} vs trained without, {baseline.name}: {base:.4f}")
    off = outcome.metrics.get(BPB_OFF_METRIC)
    if off is not None and outcome.neighbours != "none":
        against.append(f"{_change(bpb, off)} vs the same weights without {pronoun}: {off:.4f}")
    return f"{kind}: val bpb {bpb:.4f}" + (f" ({'; '.join(against)})" if against else "")


def best_outcome(outcomes: Sequence[RunOutcome]) -> RunOutcome | None:
    """The outcome with the lowest ``val/bpb`` (the first of equals), or None if none has it."""
    scored = [o for o in outcomes if math.isfinite(o.metrics.get(BPB_METRIC, math.nan))]
    return min(scored, key=lambda outcome: outcome.metrics[BPB_METRIC], default=None)


def log_sweep_result(
    points: Sequence[SweepPoint],
    outcomes: Sequence[RunOutcome],
    parent: Any,
    sweep_dir: Path,
    comparison: str | None = None,
) -> str:
    """Describe every point's run (against its baseline), and give the parent (a
    :class:`~retro_platform.tracking.run.TrackedRun`) the points' table and chart, the best
    point and a description of the sweep's result, which it returns. ``comparison``: the
    markdown of the comparison by neighbour overlap, if the sweep made one."""
    described = {}
    for point, outcome in zip(points, outcomes, strict=True):
        baseline = None
        if point.experiment.train.neighbours != "none":
            found = matching_point(points, point, "none")
            baseline = None if found is None else outcomes[found]
        text = run_description(outcome, baseline)
        if text is not None:  # the points that finished earlier are described too
            set_description(parent.client, outcome.run_id, text)
            described[outcome.run_id] = text
    table = points_markdown(outcomes)
    files = [
        write_points_csv(outcomes, sweep_dir / POINTS_CSV),
        write_text_atomic(sweep_dir / POINTS_MARKDOWN, table + "\n"),
        plot_runs(
            [outcome.name for outcome in outcomes],
            [outcome.metrics.get(BPB_METRIC) for outcome in outcomes],
            [outcome.metrics.get(BPB_OFF_METRIC) for outcome in outcomes],
            sweep_dir / POINTS_PNG,
        ),
    ]
    for path in files:
        parent.log_artifact(path, Path(POINTS_CSV).parent.as_posix())
    best = best_outcome(outcomes)
    if best is None:
        head = f"Sweep of {len(outcomes)} points: none has a validation bpb."
    else:
        parent.log_metrics(0, {BEST_METRIC: best.metrics[BPB_METRIC]})
        parent.set_tags({BEST_RUN_TAG: best.run_id, BEST_RUN_NAME_TAG: best.name})
        head = (
            f"Sweep of {len(outcomes)} points; the best is **{best.name}** (run "
            f"{best.run_id[:8]}): {described[best.run_id]}."
        )
    parts = [head, "Validation bits per byte (lower is better) of every point:", table]
    if comparison is not None:
        parts.append(comparison.rstrip("\n"))
    description = "\n\n".join(parts) + "\n"
    if len(description) > MAX_TAG_VALUE:  # a table cut short would be wrong: point to it
        description = "\n\n".join([*parts[:3], "The comparison: artifacts, comparison/"]) + "\n"
    parent.describe(description)
    return description


def points_markdown(outcomes: Sequence[RunOutcome]) -> str:
    """Every point's run, short id and final metrics, as a markdown table."""
    header = ("run", "id", *FINAL_METRICS)
    rows = [
        (
            outcome.name,
            outcome.run_id[:8],
            *(_number(outcome.metrics.get(key)) for key in FINAL_METRICS),
        )
        for outcome in outcomes
    ]
    return markdown_table(header, rows)


def write_points_csv(outcomes: Sequence[RunOutcome], path: Path) -> Path:
    """Every point's run name, run id and final metrics (empty: not measured) as CSV."""
    rows = [
        [
            outcome.name,
            outcome.run_id,
            *(_csv_number(outcome.metrics.get(k)) for k in FINAL_METRICS),
        ]
        for outcome in outcomes
    ]
    with atomic_destination(path) as temporary, temporary.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["run", "run_id", *FINAL_METRICS])
        writer.writerows(rows)
    return path


def _change(value: float, reference: float) -> str:
    return f"{(value - reference) / reference:+.1%}" if reference > 0 else "n/a"


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(value)  # every digit, read back exactly


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"
