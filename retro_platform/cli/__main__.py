"""``python -m retro_platform.cli``: the same as the ``retro-platform`` command."""

from retro_platform.cli import cli

cli(prog_name="retro-platform")
