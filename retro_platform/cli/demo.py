"""``retro-platform demo``: a few minutes of real RETRO training, no data download."""

from __future__ import annotations

import click

from retro_platform.cli.group import cli
from retro_platform.errors import ConfigError


@cli.command()
@click.option("--files", default=40, show_default=True, help="Standard-library files to read.")
@click.option("--steps", default=300, show_default=True, help="Training steps.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
def demo(files: int, steps: int, seed: int) -> None:
    """Train a small RETRO on the standard library for a few minutes (no data download)."""
    from retro_platform.cpu_allocator import keep_freed_memory
    from retro_platform.demo import run_demo

    if files < 2 or steps < 1:
        raise ConfigError("demo needs --files of at least 2 and --steps of at least 1")
    keep_freed_memory()
    run_demo(files=files, steps=steps, seed=seed, echo=click.echo)
