"""One point of an experiment, end to end: stages, training, evaluation, samples, MLflow.

Everything a point produces lives in its run folder, ``[train] output/<name>-<key>``, where the
key is a hash of the resolved configuration: the checkpoint, the MLflow run id and, once the
run has finished, ``done.json``. Starting the same command again therefore resumes the same
training from its last checkpoint into the same MLflow run, and a finished point is skipped.

Under ``torchrun`` every process runs the point (``processes``): process 0 runs the retrieval
stages but the sharded ones while the others wait (:func:`_prepare_index`), then all of them train, each on its
slice of every batch; process 0 alone holds the MLflow run, writes the run folder's files and
evaluates and samples after training while the others wait, then all go on together. The run
folder's path is a function of the configuration, so every process knows it without being told.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from retro_platform.atomic import write_text_atomic
from retro_platform.config import Experiment
from retro_platform.config.resolved import (
    flatten_config,
    logged_experiment_file,
    resolved_config,
)
from retro_platform.errors import RunInUseError
from retro_platform.pipeline import Shard, ingest, run_index
from retro_platform.runner import steps
from retro_platform.runner.folder import DONE, RunOutcome, run_folder, training_alone
from retro_platform.runner.results import run_description
from retro_platform.store.locks import reading_index
from retro_platform.tracking.run import TrackedRun, load_run_id, save_run_id
from retro_platform.training import distributed
from retro_platform.training.distributed import SINGLE, Processes


def run_point(
    experiment: Experiment,
    store: Any,
    tracking: Any,
    *,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    processes: Processes = SINGLE,
) -> RunOutcome:
    """Run (or resume, or skip when finished) one point: see the module docstring.
    ``tracking`` is None in every process but process 0."""
    resolved = resolved_config(experiment)
    params = flatten_config(resolved)
    run_dir = run_folder(experiment, params)
    # the folder's name ends in a hash of the config; the MLflow run is named for a reader
    name = run_name or experiment.mlflow.run_name or experiment.experiment.name
    done = run_dir / DONE
    if done.exists():
        return _finished(name, run_dir, experiment, log)

    if not processes.is_main:
        index = _prepare_index(experiment, store, processes, progress=progress, log=log)
        _train_alongside(experiment, store, index, run_dir, processes)
        return RunOutcome(name, "", run_dir, neighbours=experiment.train.neighbours)

    run_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        held.enter_context(training_alone(run_dir, experiment.hint_file))  # a second: refused
        if done.exists():  # finished by the process that held the folder a moment ago
            if processes.distributed:  # the others are on their way to train: stop them too
                raise RunInUseError(
                    f"run folder {run_dir} was finished by another process meanwhile; run: "
                    f"retro-platform run {experiment.hint_file} (it finds the run finished)"
                )
            return _finished(name, run_dir, experiment, log)
        index = _prepare_index(experiment, store, processes, progress=progress, log=log)
        # evaluation and samples read the index again: store prune leaves it until done.json
        held.enter_context(reading_index(store, index.corpus_id))
        run = TrackedRun.start(
            tracking.client,
            tracking.experiment_name,
            run_name=name,
            parent_run_id=parent_run_id,
            run_id=load_run_id(run_dir),
            tags=tracking.tags(experiment, store_id=index.neighbours.id),
        )
        save_run_id(run_dir, run.run_id)
        log(f"{name}: MLflow run {run.run_id} ({tracking.uri_for_display})")
        try:
            run.log_params(params)
            metrics = _train_and_evaluate(
                experiment, store, index, run, run_dir, resolved, progress, log, processes
            )
        except BaseException as error:
            # a kill leaves the run RUNNING and the checkpoint in place: the same command
            # resumes
            run.abandon(error)
            raise
        outcome = RunOutcome(
            name, run.run_id, run_dir, metrics, neighbours=experiment.train.neighbours
        )
        description = run_description(outcome)
        if description is not None:  # a sweep's parent says more, against the point's baseline
            run.describe(description)
        run.finish("FINISHED")
        write_text_atomic(done, json.dumps({"run_id": run.run_id, "metrics": metrics}, indent=2))
    distributed.wait_for_main(processes)  # the others waited for the evaluation and the files
    return outcome


def _finished(
    name: str, run_dir: Path, experiment: Experiment, log: Callable[[str], None]
) -> RunOutcome:
    """The outcome of a point whose run folder says it finished: nothing is run."""
    record = json.loads((run_dir / DONE).read_text())
    log(f"{name}: finished earlier (MLflow run {record['run_id']}); nothing to do")
    return RunOutcome(
        name,
        record["run_id"],
        run_dir,
        record["metrics"],
        skipped=True,
        neighbours=experiment.train.neighbours,
    )


def _prepare_index(
    experiment: Experiment,
    store: Any,
    processes: Processes,
    *,
    progress: bool | None,
    log: Callable[[str], None],
) -> Any:
    """The retrieval stages (ingest, embeddings, index, neighbours) and their stored result.

    Under ``torchrun`` process 0 ingests while the others wait (one tokenizing pass, not one
    per process); then every process embeds its slice of the chunks and searches its slice of
    the neighbours, and process 0 merges them and builds the index between the two
    (:func:`~retro_platform.pipeline.run_index` with ``shard`` and ``barrier``): the files are
    the bytes one process writes.
    """
    if not processes.distributed:
        log(ingest(experiment, store, progress=progress).summary())
        return run_index(experiment, store, progress=progress, log=log)
    if processes.is_main:
        log(ingest(experiment, store, progress=progress).summary())
    distributed.wait_for_main(processes)
    return run_index(
        experiment,
        store,
        shard=Shard(processes.rank, processes.world_size),
        barrier=lambda: distributed.wait_for_main(processes),
        progress=progress if processes.is_main else False,
        log=log,
    )


def _train_alongside(
    experiment: Experiment, store: Any, index: Any, run_dir: Path, processes: Processes
) -> None:
    """A process other than 0: train on its slices of the batches, then wait while process 0
    evaluates, samples and logs."""
    prepared = steps.prepare_training(experiment, store, index, log=lambda _: None,
                                      processes=processes)  # fmt: skip
    steps.train_model(experiment, prepared, None, run_dir, progress=False, processes=processes)
    distributed.wait_for_main(processes)


def _train_and_evaluate(
    experiment: Experiment,
    store: Any,
    index: Any,
    run: Any,
    run_dir: Path,
    resolved: dict[str, Any],
    progress: bool | None,
    log: Callable[[str], None],
    processes: Processes,
) -> dict[str, float]:
    if experiment.source is not None:
        # the file as written but with its passwords masked, like every other record of the run
        text = logged_experiment_file(experiment.source)
        if text is None:
            log(
                f"{experiment.source.name} is not logged: a password in it could not be "
                "masked in place (config/resolved.json has the config)"
            )
        else:
            run.log_text(text, f"config/{experiment.source.name}")
    run.log_text(json.dumps(resolved, indent=2, default=str), "config/resolved.json")
    prepared = steps.prepare_training(experiment, store, index, log=log, processes=processes)

    def on_eval(step: int) -> None:
        run.log_metrics(step, steps.validation_metrics(steps.validate(experiment, prepared)))

    trained = steps.train_model(
        experiment, prepared, run, run_dir, on_eval=on_eval, progress=progress, processes=processes
    )
    metrics = steps.evaluate_and_log(
        experiment, store, index, prepared, run, run_dir, trained.step, log=log, progress=progress
    )
    if experiment.mlflow.log_checkpoint and trained.checkpoint is not None:
        run.log_artifact(trained.checkpoint, "checkpoint")
    return {**trained.metrics, **metrics}
