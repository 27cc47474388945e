"""The ``retro-platform`` command line: the group in :mod:`.group`, one module per command
(or command group), each registering itself on import."""

import os

# OpenMP threads (torch's and Faiss's libgomp) spin while they wait for work, by default. On
# cores that other processes also use, a spinning thread takes the time slice the thread it
# waits for needs: measured on 2 shared cores, a training step of the quickstart took 7.0 s
# instead of 1.4 s and generate made 6 tokens/s instead of 230. Sleeping waits cost little
# on idle cores. Read when the OpenMP runtime loads, so set before torch is imported; a value
# the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
