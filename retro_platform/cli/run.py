"""``retro-platform run``: the whole pipeline from one experiment file."""

from __future__ import annotations

import click

from retro_platform.cli.common import experiment_argument, progress_option, set_option
from retro_platform.cli.group import cli
from retro_platform.config import load_experiment


@cli.command()
@experiment_argument
@set_option
@progress_option
def run(experiment_file: str, overrides: tuple[str, ...], progress: bool | None) -> None:
    """Ingest, index, train, evaluate and sample; every run logged to MLflow.

    Stages already stored are reused. A run that was interrupted resumes from its last
    checkpoint into the same MLflow run when the same command is started again; a finished
    one is not run again. With a [sweep] table, each grid point is a child run of one parent.
    """
    from retro_platform.runner.experiment import run_experiment
    from retro_platform.runner.table import closing_summary

    experiment = load_experiment(experiment_file, overrides)
    if not experiment.model.checkpoint_activations:  # a run that asked for memory over speed
        from retro_platform.cpu_allocator import keep_freed_memory

        keep_freed_memory()
    outcomes = run_experiment(experiment, progress=progress, log=click.echo)
    click.echo(closing_summary(outcomes))
