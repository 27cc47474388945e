"""Render the CLI reference (``docs/cli.md``) from the commands' own ``--help``.

``python -m retro_platform.cli_reference > docs/cli.md`` regenerates it; a test fails when the
file and the commands disagree.
"""

from __future__ import annotations

import click
from click.testing import CliRunner

from retro_platform.cli import cli


def render() -> str:
    runner = CliRunner()
    parts = ["# Command-line reference", "", "Generated from `--help`; do not edit by hand.", ""]
    for path in _command_paths(cli, []):
        result = runner.invoke(
            cli, [*path, "--help"], prog_name="retro-platform", terminal_width=100
        )
        title = " ".join(["retro-platform", *path])
        parts += [f"## `{title}`", "", "```", result.output.rstrip(), "```", ""]
    return "\n".join(parts)


def _command_paths(group: click.Group, prefix: list[str]) -> list[list[str]]:
    """``prefix`` and every command below it, groups' subcommands included, sorted."""
    paths = [prefix]
    for name in sorted(group.commands):
        command = group.commands[name]
        if isinstance(command, click.Group):
            paths += _command_paths(command, [*prefix, name])
        else:
            paths.append([*prefix, name])
    return paths


if __name__ == "__main__":
    click.echo(render(), nl=False)
