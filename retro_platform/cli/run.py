"""``retro-platform run``: the whole pipeline from one experiment file."""

from __future__ import annotations

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

    experiment = load_experiment(experiment_file, overrides)
    if nproc is not None:
        _launch(experiment, experiment_file, overrides, progress, nproc)
        return
    from retro_platform.runner.experiment import run_experiment
    from retro_platform.runner.table import closing_summary

    if not experiment.model.checkpoint_activations:  # a run that asked for memory over speed
        from retro_platform.cpu_allocator import keep_freed_memory

        keep_freed_memory()
    main = from_environment().is_main
    outcomes = run_experiment(experiment, progress=progress, log=click.echo if main else _quiet)
    if main:
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
    import os
    import subprocess
    import sys

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
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "retro_platform", "run", experiment_file]  # fmt: skip
    for override in overrides:
        command += ["--set", override]
    if progress is not None:
        command.append("--progress" if progress else "--no-progress")
    # torchrun gives each process one OpenMP thread (and warns) unless told otherwise
    share = threads_per_process(Processes(world_size=nproc, local_world_size=nproc),
                                experiment.train.threads)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(share))}
    process = subprocess.Popen(command, env=env)
    try:
        code = process.wait()
    except KeyboardInterrupt:  # torchrun had the same Ctrl-C: let it stop its processes
        code = process.wait()
    if code:
        raise click.exceptions.Exit(code)


def _quiet(_: str) -> None:
    """Processes other than 0 under torchrun print nothing: process 0 says it all."""
