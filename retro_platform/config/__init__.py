"""The experiment file: one TOML file, validated in full before any work starts."""

from retro_platform.config.experiment import Experiment, RetrievalTable, StoreTable, load_experiment

__all__ = ["Experiment", "RetrievalTable", "StoreTable", "load_experiment"]
