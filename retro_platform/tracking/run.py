"""One MLflow run, started, resumed or nested, through an explicit ``MlflowClient``.

No fluent ``mlflow.start_run``: its active-run stack is process-global, which makes nested sweep
runs and a run resumed after a restart depend on what else the process did. A :class:`TrackedRun`
holds its client and run id and nothing else global.

A job that may be restarted saves the run id in its run folder (:func:`save_run_id`) and passes
:func:`load_run_id`'s answer to :meth:`TrackedRun.start`, so it resumes into the same run.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from retro_platform.atomic import write_text_atomic
from retro_platform.errors import ConfigError
from retro_platform.tracking.params import (
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    batches,
    mlflow_params,
    mlflow_tags,
)
from retro_platform.tracking.uri import sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: The file in a run folder that holds the MLflow run id.
RUN_ID_FILE = "mlflow_run_id"
#: The tag MLflow (and its UI) reads a nested run's parent from.
PARENT_TAG = "mlflow.parentRunId"
#: The tag MLflow shows as a run's description (markdown), on the run's own page.
DESCRIPTION_TAG = "mlflow.note.content"
#: Where artifacts of a SQLite-tracked experiment go, beside the database.
ARTIFACTS_FOLDER = "mlartifacts"

Status = Literal["FINISHED", "FAILED", "KILLED"]
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_log = logging.getLogger(__name__)


@dataclass
class TrackedRun:
    """An MLflow run that this process is logging to. Make one with :meth:`start`.

    As a context manager it finishes the run on exit: ``FINISHED``, ``KILLED`` after Ctrl-C,
    ``FAILED`` after any other exception.
    """

    client: MlflowClient
    run_id: str
    experiment_id: str
    #: True when :meth:`start` continued an existing run.
    resumed: bool = False
    #: Why a run id given to :meth:`start` was not resumed, or None.
    notice: str | None = None
    _params: dict[str, str] = field(default_factory=dict, repr=False)
    #: Latest step of each metric a resumed run had logged (see :meth:`log_metrics`).
    _logged_steps: dict[str, int] = field(default_factory=dict, repr=False)
    _status_before: str | None = field(default=None, repr=False)
    _finished: bool = field(default=False, repr=False)

    # ------------------------------------------------------------ starting

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        experiment_name: str,
        *,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> TrackedRun:
        """Start a run in the experiment ``experiment_name`` (created if missing).

        With ``run_id``, resume that run: it is set RUNNING again and keeps its params and
        metrics. A run id that is unknown, deleted or in another experiment starts a new run
        instead, and says so through ``log`` (default: a logging warning) and :attr:`notice`.
        With ``parent_run_id`` the run is nested under that run (a sweep's child).
        """
        experiment_id = get_or_create_experiment(client, experiment_name)
        all_tags = dict(tags or {})
        if parent_run_id is not None:
            all_tags[PARENT_TAG] = parent_run_id
        notice = None
        if run_id is not None:
            existing, notice = _resumable(client, run_id, experiment_id, experiment_name)
            if existing is not None:
                run = cls(
                    client,
                    run_id,
                    experiment_id,
                    resumed=True,
                    _params=dict(existing.data.params),
                    _logged_steps=_latest_steps(client, run_id, existing.data.metrics),
                    _status_before=existing.info.status,
                )
                client.update_run(run_id, status="RUNNING", name=run_name)
                run.set_tags(all_tags)
                return run
            (log or _log.warning)(notice)
        created = client.create_run(experiment_id, run_name=run_name, tags=mlflow_tags(all_tags))
        return cls(client, created.info.run_id, experiment_id, notice=notice)

    # ------------------------------------------------------------ logging

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params (a flattened config), in batches MLflow accepts.

        Params already logged with the same value are skipped, so resuming logs nothing twice.
        A different value for a logged key raises :class:`ConfigError` before anything is
        logged: a resumed run must be the same config. The run then goes back to the status
        it had before the resume, and a later :meth:`finish` leaves it so.
        """
        # lazy: importing mlflow starts its telemetry unless quiet_mlflow_environment() ran first
        from mlflow.entities import Param

        wanted = mlflow_params(params)
        changed = [key for key, value in wanted.items() if self._params.get(key, value) != value]
        if changed:
            key = changed[0]
            self._restore_status()
            raise ConfigError(
                f"param {key!r} is {_short(wanted[key])} but run {self.run_id} logged "
                f"{_short(self._params[key])}"
                + (f" ({len(changed)} params differ)" if len(changed) > 1 else "")
                + ": the config changed since the run started; start a new run instead of "
                "resuming this one"
            )
        new = {key: value for key, value in wanted.items() if key not in self._params}
        for batch in batches(new, PARAMS_PER_BATCH):
            self.client.log_batch(
                self.run_id, params=[Param(key, value) for key, value in batch.items()]
            )
            self._params.update(batch)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log metric values at ``step`` (one timestamp for all).

        A metric at a step no later than the last one the run logged for it is skipped, in
        this process or, for a resumed run, before the restart: a job restarted from its last
        checkpoint repeats the steps it ran after that checkpoint, and each point belongs in
        the history once.
        """
        # lazy: importing mlflow starts its telemetry unless quiet_mlflow_environment() ran first
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(key, float(value), now, int(step))
            for key, value in metrics.items()
            if step > self._logged_steps.get(key, -1)
        ]
        for start in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + METRICS_PER_BATCH])
        # the final evaluation repeats the last periodic one when [eval] every divides the
        # steps: logged once, as a resumed run logs it
        self._logged_steps.update((item.key, item.step) for item in items)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        # lazy: importing mlflow starts its telemetry unless quiet_mlflow_environment() ran first
        from mlflow.entities import RunTag

        for batch in batches(mlflow_tags(tags), PARAMS_PER_BATCH):
            self.client.log_batch(
                self.run_id, tags=[RunTag(key, value) for key, value in batch.items()]
            )

    def describe(self, text: str) -> None:
        """Set the run's description, which the MLflow UI shows on the run's page."""
        set_description(self.client, self.run_id, text)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a folder's contents) into the run's artifacts, under
        ``artifact_path`` if given."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        """Save ``text`` as the artifact ``name`` (a relative path, e.g. ``"config.toml"``)."""
        self.client.log_text(self.run_id, text, name)

    @property
    def params(self) -> dict[str, str]:
        """The params the run holds (as MLflow keeps them)."""
        return dict(self._params)

    # ------------------------------------------------------------ ending

    def finish(self, status: Status = "FINISHED") -> None:
        """End the run with ``status``. Once the run has ended, or a refused resume gave it
        back as it was (:meth:`log_params`), this does nothing."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, not {status!r}")
        if self._finished:
            return
        self.client.set_terminated(self.run_id, status)
        self._finished = True

    def abandon(self, error: BaseException) -> None:
        """End the run that ``error`` stopped: ``KILLED`` after Ctrl-C, ``FAILED`` otherwise.

        One request, without MLflow's retries: the error may be the tracking store's own (a
        server that stopped answering, where each request retries for about four minutes), and
        the caller re-raises ``error``, which says what went wrong. A store that does not
        answer leaves the run ``RUNNING``, as a SIGKILL does; rerunning resumes it.
        """
        # lazy: importing mlflow starts its telemetry unless quiet_mlflow_environment() ran first
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        status: Status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            with _one_http_try():
                self.finish(status)
        except (MlflowException, SQLAlchemyError) as failed:
            _log.info("MLflow run %s left RUNNING: cannot set it %s (%s)",
                         self.run_id, status, failed)  # fmt: skip

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        if error is None:
            self.finish("FINISHED")
        else:
            self.abandon(error)

    def _restore_status(self) -> None:
        # a resume refused before any work: leave the run as it was, not FAILED
        if self.resumed and self._status_before is not None:
            self.client.update_run(self.run_id, status=self._status_before)
            self._finished = True


@contextmanager
def _one_http_try() -> Iterator[None]:
    """MLflow's HTTP requests inside the block make one try of at most 10 s (MLflow reads
    these variables at each request; a SQLite or database store ignores them)."""
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    before = {name: os.environ.get(name) for name in limits}
    os.environ.update(limits)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of the MLflow experiment ``name``, created if missing.

    A SQLite-tracked experiment keeps its artifacts in ``mlartifacts/`` beside the database,
    not in the working directory (MLflow's default), so they are found from anywhere.
    Raises :class:`ConfigError` if the experiment was deleted.
    """
    # lazy: importing mlflow starts its telemetry unless quiet_mlflow_environment() ran first
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=_artifact_location(client, name)
            )
        except MlflowException as error:
            # another process created it first
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}), or set [mlflow] experiment to "
            "another name"
        )
    return str(experiment.experiment_id)


def set_description(client: MlflowClient, run_id: str, text: str) -> None:
    """Set the description of the run ``run_id`` (any run: a sweep describes its finished
    points); a text longer than MLflow's limit is cut."""
    client.set_tag(run_id, DESCRIPTION_TAG, mlflow_tags({DESCRIPTION_TAG: text})[DESCRIPTION_TAG])


def _artifact_location(client: MlflowClient, name: str) -> str | None:
    database = sqlite_path(str(client.tracking_uri))
    if database is None:
        return None  # a server or another database decides
    folder = re.sub(r"[^\w.-]", "_", name) or "experiment"
    return (database.parent / ARTIFACTS_FOLDER / folder).resolve().as_uri()


def _resumable(client: MlflowClient, run_id: str, experiment_id: str, name: str):  # noqa: ANN202
    """``(run, None)`` for a run that can be resumed, else ``(None, why not)``."""
    # lazy: importing mlflow starts its telemetry unless quiet_mlflow_environment() ran first
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None, f"MLflow run {run_id} does not exist here: starting a new run"
    if run.info.lifecycle_stage == "deleted":
        return None, f"MLflow run {run_id} was deleted: starting a new run"
    if str(run.info.experiment_id) != experiment_id:
        return None, (
            f"MLflow run {run_id} belongs to another experiment than {name!r}: starting a new run"
        )
    return run, None


def _latest_steps(client: MlflowClient, run_id: str, keys: Iterable[str]) -> dict[str, int]:
    """The last step each metric of a run was logged at (one history read per metric)."""
    return {
        key: max((metric.step for metric in client.get_metric_history(run_id, key)), default=-1)
        for key in keys
    }


def _short(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


# ---------------------------------------------------------------- the run folder


def save_run_id(run_dir: str | Path, run_id: str) -> Path:
    """Write ``run_id`` to ``run_dir/mlflow_run_id`` atomically; return the file."""
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"not an MLflow run id: {run_id!r}")
    return write_text_atomic(Path(run_dir) / RUN_ID_FILE, run_id + "\n")


def load_run_id(run_dir: str | Path) -> str | None:
    """The run id saved in ``run_dir``, or None if there is none."""
    path = Path(run_dir) / RUN_ID_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the saved MLflow run id {path}: {error}") from None
    if not _RUN_ID.fullmatch(text):
        raise ConfigError(f"{path} does not hold an MLflow run id: delete it to start a new run")
    return text
