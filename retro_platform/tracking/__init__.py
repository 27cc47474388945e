"""Experiment tracking in MLflow: where runs go (:mod:`.uri`), what they record
(:mod:`.params`), one run started, resumed or nested (:mod:`.run`), and the runs listed
(:mod:`.listing`).

Importing this package does not import mlflow (seconds); the functions that need it do.
"""

from __future__ import annotations

from retro_platform.tracking.client import TrackingError, open_client, tracking_errors
from retro_platform.tracking.params import mlflow_params, tags_for
from retro_platform.tracking.run import TrackedRun, load_run_id, save_run_id
from retro_platform.tracking.uri import check_reachable, experiment_name, tracking_uri

__all__ = [
    "TrackedRun",
    "TrackingError",
    "check_reachable",
    "experiment_name",
    "load_run_id",
    "mlflow_params",
    "open_client",
    "save_run_id",
    "tags_for",
    "tracking_errors",
    "tracking_uri",
]
