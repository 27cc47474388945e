"""``python -m retro_platform``: the ``retro-platform`` command, as ``torchrun -m
retro_platform run EXPERIMENT.toml`` starts it in each training process."""

from retro_platform.cli import cli

cli(prog_name="retro-platform")
