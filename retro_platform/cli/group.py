"""The ``retro-platform`` command line.

Every command is a subcommand of :data:`cli`, defined in a module of this package that
``retro_platform/cli/__init__.py`` imports. Adding one is::

    @cli.command()
    @click.argument("experiment", type=click.Path(exists=True, dir_okay=False))
    def validate(experiment: str) -> None:
        \"\"\"Check EXPERIMENT.toml without running it.\"\"\"
        ...  # raise a RetroPlatformError (e.g. ConfigError) for anything the user must fix

Commands never
catch :class:`~retro_platform.errors.RetroPlatformError` themselves: :class:`RetroGroup` turns it
into one ``Error: <message>`` line on stderr and exit code 2, the same for every command.
Import heavy libraries (torch, faiss, mlflow) inside command bodies, so ``--help`` stays fast.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

import click

from retro_platform.errors import RetroPlatformError
from retro_platform.parent_watch import exit_if_parent_gone, exit_with_parent
from retro_platform.training.launch import RESUME, record_failure


class RetroGroup(click.Group):
    """A click group that reports a :class:`RetroPlatformError` from any subcommand as one line,
    and ends the traceback of any other error raised in a third-party plugin's code with a
    line that names the plugin.

    Wrapping ``invoke`` covers the subcommand's own parameter parsing and callbacks as well as
    its body, and nested groups, since they all run inside it.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RetroPlatformError as exc:
            message = " ".join(str(exc).splitlines()) or type(exc).__name__
            click.echo(f"Error: {message}", err=True)
            record_failure(exc.exit_code, message)  # under `run --nproc`: the launcher's exit code
            ctx.exit(exc.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Exit):
            raise
        except Exception as exc:
            exit_if_parent_gone()  # an error that torchrun's death caused: its one line only
            # a bug keeps its traceback; one raised in a plugin's code also names the plugin
            from retro_platform.plugins import plugin_in_traceback  # lazy: --help stays fast

            blamed = plugin_in_traceback(exc)
            if blamed is None:
                raise
            traceback.print_exception(exc)
            click.echo(f"Error: {blamed}", err=True)
            record_failure(1, blamed)
            ctx.exit(1)


@click.group(cls=RetroGroup)
@click.version_option(package_name="retro-platform", prog_name="retro-platform")
def cli() -> None:
    """Train, retrieve with and compare RETRO models; swap parts through plugins."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        # torchrun starts each process in a session of its own: killed outright (SIGKILL,
        # with its launcher's process group), it leaves them training with no one to stop them
        gone = f"Error: torchrun (pid {os.getppid()}) is gone: this process stops; {RESUME}"
        # said once a machine, by its first process, as the other messages are
        exit_with_parent(1, gone if os.environ.get("LOCAL_RANK", "0") == "0" else None)
