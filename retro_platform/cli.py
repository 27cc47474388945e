"""The ``retro-platform`` command line.

Every command is a subcommand of :data:`cli`. Adding one is::

    @cli.command()
    @click.argument("experiment", type=click.Path(exists=True, dir_okay=False))
    def validate(experiment: str) -> None:
        \"\"\"Check EXPERIMENT.toml without running it.\"\"\"
        ...  # raise a RetroPlatformError (e.g. ConfigError) for anything the user must fix

(or ``cli.add_command(command)`` for a command defined in its own module). Commands never
catch :class:`~retro_platform.errors.RetroPlatformError` themselves: :class:`RetroGroup` turns it
into one ``Error: <message>`` line on stderr and exit code 2, the same for every command.
Import heavy libraries (torch, faiss, mlflow) inside command bodies, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
from typing import Any

import click

from retro_platform.errors import ConfigError, RetroPlatformError


class RetroGroup(click.Group):
    """A click group that reports a :class:`RetroPlatformError` from any subcommand as one line.

    Wrapping ``invoke`` covers the subcommand's own parameter parsing and callbacks as well as
    its body, and nested groups, since they all run inside it.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RetroPlatformError as exc:
            message = " ".join(str(exc).splitlines()) or type(exc).__name__
            click.echo(f"Error: {message}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=RetroGroup)
@click.version_option(package_name="retro-platform", prog_name="retro-platform")
def cli() -> None:
    """Train, retrieve with and compare RETRO models; swap parts through plugins."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plugins as JSON.")
def plugins(as_json: bool) -> None:
    """List the installed plugins, their hooks and the names each registers.

    Built-in plugins are listed too: they load exactly as third-party ones do. Set
    RETRO_PLATFORM_LOAD_PLUGINS to a comma-separated list of plugin or distribution names to
    load only those third-party plugins.
    """
    from retro_platform.plugins import plugin_info

    info = plugin_info()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [
        (
            plugin["name"],
            plugin["distribution"],
            plugin["version"],
            ", ".join(plugin["hooks"]),
            "; ".join(
                f"{family}: {', '.join(names)}" for family, names in plugin["registers"].items()
            ),
        )
        for plugin in info
    ]
    click.echo(_table(("PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS", "REGISTERS"), rows))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns two spaces apart, like ``pip list``."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


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


if __name__ == "__main__":  # python -m retro_platform.cli
    cli(prog_name="retro-platform")
