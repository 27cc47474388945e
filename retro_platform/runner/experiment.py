"""``retro-platform run``: every point of an experiment file, in one MLflow experiment.

All checking comes first, before any work: the tables, the plugins, the rules between tables,
every sweep point and the tracking server. A file without ``[sweep]`` is one run; with one,
a parent run holds a nested child run per grid point. Points share what they can: the store's
fingerprints make a stage that two points have in common (the corpus, its embeddings) run once.

Under ``torchrun`` every process runs this: it joins the others
(:func:`~retro_platform.training.distributed.start`), process 0 opens the store first (a new
one is created and migrated once) and alone talks to MLflow; the others run each point
alongside it, quietly (:func:`~retro_platform.runner.run.run_point`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retro_platform.atomic import write_text_atomic
from retro_platform.config import Experiment
from retro_platform.config.resolved import flatten_config, resolved_config
from retro_platform.config.sweep import SweepPoint, check_experiment
from retro_platform.corpus.ingest import check_corpora
from retro_platform.errors import RetroPlatformError
from retro_platform.runner.ablation import log_comparison
from retro_platform.runner.folder import RunOutcome, check_output
from retro_platform.runner.results import log_sweep_result
from retro_platform.runner.run import run_point
from retro_platform.runner.steps import choose_device
from retro_platform.store.database import open_store
from retro_platform.store.fingerprints import fingerprint, short
from retro_platform.store.urls import hide_passwords
from retro_platform.tracking.client import open_client, tracking_errors
from retro_platform.tracking.params import tags_for
from retro_platform.tracking.run import TrackedRun, load_run_id, save_run_id
from retro_platform.tracking.uri import experiment_name, safe_uri, tracking_uri
from retro_platform.training import distributed
from retro_platform.training.distributed import Processes
from retro_platform.training.launch import record_failure

#: What a run stopped by its tracking store does when started again.
RESUMES = "run the same command again when it answers: the run resumes from its last checkpoint"


@dataclass(frozen=True)
class Tracking:
    """The MLflow side of a run: a client on the tracking store and what to tag runs with."""

    client: Any
    experiment_name: str
    uri: str

    @property
    def uri_for_display(self) -> str:
        return safe_uri(self.uri)

    def tags(self, experiment: Experiment, store_id: int | None = None) -> dict[str, str]:
        return tags_for(experiment, store_id=store_id)


def open_tracking(experiment: Experiment) -> Tracking:
    """A client on the experiment's tracking store, after checking that it answers."""
    uri = tracking_uri(experiment)
    return Tracking(open_client(uri), experiment_name(experiment), uri)


def run_experiment(
    experiment: Experiment,
    *,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Run every point of ``experiment``; see the module docstring. Under ``torchrun``,
    the processes other than 0 return an outcome without a run id or metrics per point."""
    points = check_experiment(experiment)  # every point in full, before any work
    place = distributed.from_environment()
    for point in points:  # before joining: a bad size stops every process at once
        distributed.check_batch_size(point.experiment.train.batch_size, place.world_size)
    for one in [experiment, *(point.experiment for point in points)]:  # a sweep's folder too
        check_output(one)
    processes = distributed.start(choose_device(experiment).type)
    try:
        if processes.is_main:  # the corpus, which process 0 alone reads, before any store
            check_corpora([point.experiment for point in points])
        if not processes.is_main:
            store = _open_store(experiment, processes)
            each = [p.experiment for p in points] if experiment.sweep.grid else [experiment]
            return [
                run_point(one, store, None, progress=False, log=_quiet, processes=processes)
                for one in each
            ]
        tracking = open_tracking(experiment)
        store = _open_store(experiment, processes)
        # an MLflow failure is one line too; the run folder keeps what a rerun resumes from
        with tracking_errors(tracking.uri, "log to", then=RESUMES):
            if not experiment.sweep.grid:
                return [
                    run_point(
                        experiment, store, tracking, progress=progress, log=log, processes=processes
                    )  # fmt: skip
                ]
            return _run_sweep(
                experiment, points, store, tracking, progress=progress, log=log,
                processes=processes,
            )  # fmt: skip
    except RetroPlatformError as error:
        # before leaving the group: a process whose collective breaks when this one leaves
        # then finds why, and stops without a traceback of its own (`run --nproc`)
        record_failure(error.exit_code, str(error))
        raise
    finally:
        distributed.stop(processes)


def _open_store(experiment: Experiment, processes: Processes) -> Any:
    """The experiment's store, opened by process 0 first: opening a new one creates and
    migrates it, which one process must do alone."""
    if processes.is_main:
        store = open_store(
            experiment.store.database_url, experiment.store.path, hint_file=experiment.hint_file
        )
        distributed.wait_for_main(processes)
        return store
    distributed.wait_for_main(processes)
    return open_store(
        experiment.store.database_url, experiment.store.path, hint_file=experiment.hint_file
    )


def _quiet(_: str) -> None:
    """The log of a process other than 0: process 0 says it all."""


def _run_sweep(
    experiment: Experiment,
    points: list[SweepPoint],
    store: Any,
    tracking: Tracking,
    *,
    progress: bool | None,
    log: Callable[[str], None],
    processes: Processes,
) -> list[RunOutcome]:
    grid = experiment.sweep.grid
    key = short(fingerprint(config=flatten_config(resolved_config(experiment)), grid=grid))
    sweep_dir = experiment.train.output / f"{experiment.experiment.name}-sweep-{key}"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    shown = hide_passwords(grid)  # what is logged and written: a swept store.url masked
    parent = TrackedRun.start(
        tracking.client,
        tracking.experiment_name,
        run_name=experiment.mlflow.run_name or f"{experiment.experiment.name} sweep",
        run_id=load_run_id(sweep_dir),
        tags={**tracking.tags(experiment), "retro.sweep": json.dumps(shown)},
    )
    save_run_id(sweep_dir, parent.run_id)
    log(f"sweep of {len(points)} points: MLflow parent run {parent.run_id}")
    outcomes = []
    try:
        parent.log_params({f"sweep.{name}": json.dumps(values) for name, values in shown.items()})
        for point in points:
            log(f"point {point.index + 1}/{len(points)}: {point.label}")
            outcomes.append(
                run_point(
                    point.experiment,
                    store,
                    tracking,
                    parent_run_id=parent.run_id,
                    run_name=point.label,
                    progress=progress,
                    log=log,
                    processes=processes,
                )
            )
        compared = log_comparison(
            points, outcomes, parent, sweep_dir, experiment.eval.leakage_buckets, log=log
        )
        log_sweep_result(points, outcomes, parent, sweep_dir, compared)
    except BaseException as error:
        parent.abandon(error)
        raise
    parent.finish("FINISHED")
    _write_summary(sweep_dir, points, outcomes)
    if compared is not None:
        log(f"the points compared (in {sweep_dir} and the parent run's artifacts):\n{compared}")
    return outcomes


def _write_summary(sweep_dir: Path, points: list[SweepPoint], outcomes: list[RunOutcome]) -> None:
    rows = [
        {
            "values": hide_passwords(point.values),
            "run_id": outcome.run_id,
            "metrics": outcome.metrics,
        }
        for point, outcome in zip(points, outcomes, strict=True)
    ]
    write_text_atomic(sweep_dir / "summary.json", json.dumps(rows, indent=2, default=str))
