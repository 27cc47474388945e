"""The summary ``retro-platform run`` prints at its end: one row per run, then, for each run
with retrieved neighbours, retrieval's gain split by how much a chunk overlaps them."""

from __future__ import annotations

import math

from retro_platform.cli.tables import text_table
from retro_platform.runner.run import LEAKAGE_CSV, RunOutcome
from retro_platform.tracking.listing import FINAL_METRICS


def closing_summary(outcomes: list[RunOutcome]) -> str:
    """The runs table, then the overlap split of every run that has one."""
    parts = [outcomes_table(outcomes)]
    parts += [split for outcome in outcomes if (split := overlap_split(outcome)) is not None]
    return "\n\n".join(parts)


def outcomes_table(outcomes: list[RunOutcome]) -> str:
    """A plain-text table of the runs' final metrics, under their MLflow names (the columns
    of ``retro-platform runs``)."""
    header = ("run", "MLflow run id", *FINAL_METRICS)
    rows = [
        [
            outcome.name + (" (finished earlier)" if outcome.skipped else ""),
            outcome.run_id,
            *(_number(outcome.metrics.get(key)) for key in FINAL_METRICS),
        ]
        for outcome in outcomes
    ]
    return text_table(header, rows)


def overlap_split(outcome: RunOutcome) -> str | None:
    """Validation bpb with retrieval and with the same weights without it, and the gain, per
    overlap bucket and over all chunks: the leakage table the run wrote, for a newcomer. None
    for a run without retrieved neighbours or without a leakage table."""
    path = outcome.run_dir / LEAKAGE_CSV
    if outcome.neighbours != "retrieved" or not path.exists():
        return None
    from retro_platform.evaluation.leakage import read_leakage_csv

    header = ("overlap", "share of chunks", "bpb with retrieval", "same weights without", "gain")
    rows = [
        [row.bucket, f"{row.share:.1%}", _number(row.bpb), _number(row.bpb_off), _number(row.gain)]
        for row in read_leakage_csv(path)
    ]
    on, off = outcome.metrics.get("val/bpb"), outcome.metrics.get("val/bpb_retrieval_off")
    gain = None if on is None or off is None else off - on
    rows.append(["all chunks", "100.0%", _number(on), _number(off), _number(gain)])
    return "\n".join(
        [
            f"{outcome.name}: validation bits per byte by how much a chunk overlaps the "
            "neighbours it was given",
            text_table(header, rows),
            "gain: bits per byte that retrieval saves. A gain only at high overlap is copying; "
            "at low overlap, retrieval helps beyond it.",
        ]
    )


def _number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"
