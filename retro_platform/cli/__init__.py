"""The ``retro-platform`` command line: the group in :mod:`.group`, one module per command
(or command group), each registering itself on import."""

from retro_platform.cli import db, demo, plugins, stages, store  # noqa: F401  (registers the commands)
from retro_platform.cli.group import cli

__all__ = ["cli"]
