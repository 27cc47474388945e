"""The experiment file: one TOML file, validated in full before any work starts.

:func:`load_experiment` reads and validates the tables (with ``--set`` overrides);
:func:`~retro_platform.config.sweep.check_experiment` checks the rest (plugins, the rules
between tables, every sweep point); :mod:`.sweep` expands a ``[sweep]`` and :mod:`.resolved`
gives the configuration a run logs.
"""

from retro_platform.config.experiment import Experiment, RetrievalTable, StoreTable, load_experiment

__all__ = ["Experiment", "RetrievalTable", "StoreTable", "load_experiment"]
