"""The summary ``retro-platform run`` prints at its end: one row per run, then, for each run
with retrieved neighbours, retrieval's gain split by how much a chunk overlaps them."""

from __future__ import annotations

import math

from retro_platform.evaluation.leakage import read_leakage_csv
from retro_platform.runner.folder import LEAKAGE_CSV, RunOutcome
from retro_platform.text_table import text_table
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
    header = ("overlap", "share of chunks", "bpb with retrieval", "same weights without", "gain")
    rows = [
        [
            row.bucket,
            f"{row.share:.1%}",
            _number(row.bpb),
            _number(row.bpb_off),
            _gain(row.bpb, row.bpb_off),
        ]
        for row in read_leakage_csv(path)
    ]
    on, off = outcome.metrics.get("val/bpb"), outcome.metrics.get("val/bpb_retrieval_off")
    rows.append(["all chunks", "100.0%", _number(on), _number(off), _gain(on, off)])
    lines = [
        f"{outcome.name}: validation bits per byte by how much a chunk overlaps the "
        "neighbours it was given",
        text_table(header, rows),
        "gain: bits per byte that retrieval saves (and the share of the bpb without it). A gain "
        "only at high overlap is copying; at low overlap, retrieval helps beyond it.",
    ]
    if on is not None and off is not None and off > 0:
        verdict = "lowers" if on < off else "does not lower"
        lines.append(
            f"retrieval {verdict} validation bpb: {on:.4f} with it, {off:.4f} with the same "
            f"weights without it ({(on - off) / off:+.1%})"
        )
    return "\n".join(lines)


def _gain(on: float | None, off: float | None) -> str:
    """``off - on`` and that as a share of ``off``: "0.0372 (3.5%)"."""
    if on is None or off is None or math.isnan(on) or math.isnan(off):
        return ""
    share = f" ({(off - on) / off:.1%})" if off > 0 else ""
    return f"{off - on:.4f}{share}"


def _number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"
