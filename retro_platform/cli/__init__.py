"""The ``retro-platform`` command line: the group in :mod:`.group`, one module per command
(or command group), each registering itself on import."""

# each import registers its commands
from retro_platform.cli import (  # noqa: F401
    db,
    generate,
    install,
    plugin,
    plugins,
    run,
    stages,
    store,
    tracking,
    validate,
)
from retro_platform.cli.group import cli

__all__ = ["cli"]
