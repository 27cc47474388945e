"""The summary ``retro-platform run`` prints at its end: one row per run."""

from __future__ import annotations

from retro_platform.cli.tables import text_table
from retro_platform.runner.run import RunOutcome

#: The final metrics shown, in order, with their column titles.
COLUMNS = {
    "val/bpb": "val bpb",
    "val/bpb_retrieval_off": "bpb retrieval off",
    "val/loss": "val loss",
    "train/loss": "train loss",
}


def outcomes_table(outcomes: list[RunOutcome]) -> str:
    """A plain-text table of the runs' final metrics."""
    header = ("run", "MLflow run id", *COLUMNS.values())
    rows = [
        [
            outcome.name + (" (finished earlier)" if outcome.skipped else ""),
            outcome.run_id,
            *(_number(outcome.metrics.get(key)) for key in COLUMNS),
        ]
        for outcome in outcomes
    ]
    return text_table(header, rows)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
