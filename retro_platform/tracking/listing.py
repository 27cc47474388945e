"""An experiment's runs for the terminal: sweep children under their parent, the params that
tell runs apart, and the final metrics."""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retro_platform.tracking.run import PARENT_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: Validation bits per byte, and of the same weights with retrieval off (a run that measured it).
BPB_METRIC = "val/bpb"
BPB_OFF_METRIC = "val/bpb_retrieval_off"
#: The metrics `retro-platform runs` shows, in this order (their last logged value).
FINAL_METRICS = (BPB_METRIC, BPB_OFF_METRIC, "val/loss", "train/loss")
#: A sweep parent that compares its points by neighbour overlap (a sweep over
#: ``train.neighbours``) has this tag and these artifacts, which the runner logs.
COMPARISON_TAG = "retro.comparison"
COMPARISON_CSV = "comparison/comparison.csv"
COMPARISON_MARKDOWN = "comparison/comparison.md"
COMPARISON_PNG = "comparison/comparison.png"
_PAGE = 1000


@dataclass(frozen=True)
class RunSummary:
    """What the table shows of one run."""

    run_id: str
    name: str
    status: str
    start_time: int | None  # milliseconds since the epoch
    parent_run_id: str | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    depth: int = 0  # 1 for a child shown under its parent
    #: True for a sweep parent that logged a comparison of its points (:func:`read_comparison`).
    has_comparison: bool = False

    def as_json(
        self, param_keys: list[str], comparison: SweepComparison | None = None
    ) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_name": self.name,
            "status": self.status,
            "start_time": _iso(self.start_time),
            "parent_run_id": self.parent_run_id,
            "params": {key: self.params[key] for key in param_keys if key in self.params},
            "metrics": {key: _json_number(value) for key, value in self.metrics.items()},
            "comparison": None if comparison is None else comparison.rows,
        }


@dataclass(frozen=True)
class SweepComparison:
    """A sweep parent's comparison of its points by neighbour overlap, as the runner logged it.

    Attributes:
        markdown: the table (and the gain splits) as text.
        rows: the CSV's rows: ``bucket``, ``chunks``, ``share``, ``byte_share`` and each run's
            bits per byte under its label (None where it has none).
    """

    markdown: str
    rows: list[dict[str, str | float | None]]  # chunks as an int


def read_comparison(client: MlflowClient, run_id: str) -> SweepComparison | None:
    """The comparison logged to the run ``run_id``, or None if its artifacts are gone."""
    # lazy: importing mlflow starts its telemetry unless quiet_mlflow_environment() ran first
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder:
        try:
            markdown = Path(client.download_artifacts(run_id, COMPARISON_MARKDOWN, folder))
            table = Path(client.download_artifacts(run_id, COMPARISON_CSV, folder))
        except (MlflowException, OSError):
            return None
        with table.open(newline="", encoding="utf-8") as file:
            rows = [
                {key: _csv_value(key, value) for key, value in row.items()}
                for row in csv.DictReader(file)
            ]
        return SweepComparison(markdown.read_text(encoding="utf-8"), rows)


def list_runs(client: MlflowClient, experiment_id: str) -> list[RunSummary]:
    """Every active run of the experiment, oldest first, each sweep parent followed by its
    children (``depth`` 1)."""
    # lazy: importing mlflow starts its telemetry unless quiet_mlflow_environment() ran first
    from mlflow.entities import ViewType

    found: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=_PAGE,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        found += list(page)
        token = page.token
        if not token:
            break
    runs = [_summary(run) for run in found]
    ids = {run.run_id for run in runs}
    children: dict[str, list[RunSummary]] = {}
    for run in runs:
        if run.parent_run_id in ids:
            children.setdefault(run.parent_run_id, []).append(run)
    ordered: list[RunSummary] = []

    def add(run: RunSummary, depth: int) -> None:
        ordered.append(replace(run, depth=depth))
        for child in children.get(run.run_id, []):
            add(child, depth + 1)

    for run in runs:
        if run.parent_run_id not in ids:  # top level, or its parent was deleted
            add(run, 0)
    return ordered


def differing_params(runs: list[RunSummary]) -> list[str]:
    """The param keys whose value is not the same in every run (a missing param counts as a
    value). Sweep parents are left out: their params describe the grid, not a config."""
    parents = {run.parent_run_id for run in runs}
    runs = [run for run in runs if run.run_id not in parents]
    keys = sorted({key for run in runs for key in run.params})
    return [key for key in keys if len({run.params.get(key) for run in runs}) > 1]


def all_params(runs: list[RunSummary]) -> list[str]:
    return sorted({key for run in runs for key in run.params})


def table_rows(
    runs: list[RunSummary], param_keys: list[str]
) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The header and rows of the runs table."""
    header = ("RUN", "ID", "STATUS", "STARTED", *param_keys, *FINAL_METRICS)
    rows = []
    for run in runs:
        indent = "  " * run.depth + ("- " if run.depth else "")
        rows.append(
            (
                indent + run.name,
                run.run_id[:8],
                run.status,
                _local_time(run.start_time),
                *(_cell(run.params.get(key)) for key in param_keys),
                *(_metric(run.metrics.get(key)) for key in FINAL_METRICS),
            )
        )
    return header, rows


def _summary(run: Any) -> RunSummary:
    tags: Mapping[str, str] = run.data.tags
    return RunSummary(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        status=run.info.status,
        start_time=run.info.start_time,
        parent_run_id=tags.get(PARENT_TAG),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        has_comparison=COMPARISON_TAG in tags,
    )


def _csv_value(key: str, text: str) -> str | float | None:
    """A comparison CSV's cell: the bucket's label, its chunks, or a number (None: empty)."""
    if key == "bucket":
        return text
    if key == "chunks":
        return int(text)
    return float(text) if text else None


def _cell(value: str | None, limit: int = 40) -> str:
    if value is None:
        return "-"
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _metric(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def _local_time(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000).astimezone().isoformat()


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON has no NaN or infinity
