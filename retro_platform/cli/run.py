"""``retro-platform run``: the whole pipeline from one experiment file."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import click

from retro_platform.cli.common import experiment_argument, progress_option, set_option
from retro_platform.cli.group import cli
from retro_platform.config import Experiment, load_experiment
from retro_platform.errors import ConfigError


@cli.command()
@experiment_argument
@set_option
@progress_option
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Train with N processes on this machine (DistributedDataParallel; one per GPU, or "
    "sharing the CPU cores): starts this command under torchrun --standalone "
    "--nproc-per-node N. For several machines run torchrun yourself (docs/scaling.md).",
)
def run(
    experiment_file: str, overrides: tuple[str, ...], progress: bool | None, nproc: int | None
) -> None:
    """Ingest, index, train, evaluate and sample; every run logged to MLflow.

    Stages already stored are reused. A run that was interrupted resumes from its last
    checkpoint into the same MLflow run when the same command is started again; a finished
    one is not run again. With a [sweep] table, each grid point is a child run of one parent.

    Under torchrun (torchrun --nproc-per-node N -m retro_platform run EXPERIMENT.toml) each
    process embeds and searches its slice of the chunks and trains on its slice of every
    batch; process 0 alone ingests, builds the index, logs, checkpoints and evaluates.
    """
    from retro_platform.training.distributed import from_environment
    from retro_platform.training.launch import another_failed

    experiment = load_experiment(experiment_file, overrides)
    if nproc is not None:
        _launch(experiment, experiment_file, overrides, progress, nproc)
        return
    from retro_platform.runner.experiment import run_experiment
    from retro_platform.runner.table import closing_summary

    if not experiment.model.checkpoint_activations:  # a run that asked for memory over speed
        from retro_platform.cpu_allocator import keep_freed_memory

        keep_freed_memory()
    place = from_environment()
    try:
        outcomes = run_experiment(
            experiment, progress=progress, log=click.echo if place.is_main else _quiet
        )
    except Exception:
        if place.distributed and another_failed(place.rank):
            # its collective broke because that process left: its one line says why
            raise click.exceptions.Exit(1) from None
        raise
    if place.is_main:
        click.echo(closing_summary(outcomes))


def _launch(
    experiment: Experiment,
    experiment_file: str,
    overrides: tuple[str, ...],
    progress: bool | None,
    nproc: int,
) -> None:
    """This command again under ``torchrun`` with ``nproc`` processes, after checking the file
    here (a mistake is then one line, not one per process)."""
    import subprocess

    from retro_platform.config.sweep import check_experiment
    from retro_platform.training.distributed import (
        Processes,
        check_batch_size,
        from_environment,
        threads_per_process,
    )

    if from_environment().distributed:
        raise ConfigError("--nproc starts torchrun itself: leave it out under torchrun")
    for point in check_experiment(experiment):
        check_batch_size(point.experiment.train.batch_size, nproc)
    command = [sys.executable, "-m", "retro_platform.training.launch", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "retro_platform", "run", experiment_file]  # fmt: skip
    for override in overrides:
        command += ["--set", override]
    if progress is not None:
        command.append("--progress" if progress else "--no-progress")
    # torchrun gives each process one OpenMP thread (and warns) unless told otherwise
    share = threads_per_process(Processes(world_size=nproc, local_world_size=nproc),
                                experiment.train.threads)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(share))}
    # torchrun stops its processes on SIGTERM or SIGHUP: pass on those this process gets, and
    # have it stopped with SIGTERM if this process is killed (SIGKILL), so that no process of
    # the run goes on training alone while the same command is started again
    process = subprocess.Popen(command, env=env, preexec_fn=_stop_with_parent(os.getpid()))
    forwarded = {signum: signal.signal(signum, lambda number, _: process.send_signal(number))
                 for signum in (signal.SIGTERM, signal.SIGHUP)}  # fmt: skip
    try:
        try:
            code = process.wait()
        except KeyboardInterrupt:  # torchrun had the same Ctrl-C: let it stop its processes
            code = process.wait()
    finally:
        for signum, handler in forwarded.items():
            signal.signal(signum, handler)
    if code:
        raise click.exceptions.Exit(code if code > 0 else 1)


def _stop_with_parent(parent: int) -> Callable[[], None] | None:
    """For the child: get SIGTERM when ``parent`` dies (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child

    def arrange() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return arrange


def _quiet(_: str) -> None:
    """Processes other than 0 under torchrun print nothing: process 0 says it all."""
