"""The summary ``retro-platform run`` prints at its end: one row per run."""

from __future__ import annotations

from retro_platform.cli.tables import text_table
from retro_platform.runner.run import RunOutcome
from retro_platform.tracking.listing import FINAL_METRICS


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


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
