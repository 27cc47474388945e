"""``[sweep]``: the grid of an experiment file, one fully validated experiment per point.

The grid is the product of every swept key's values, keys in file order (the last key varies
fastest). Each point is the file with its values applied and no sweep, validated exactly like a
file of its own (tables, plugin options, the rules between tables), so a sweep with one bad
point fails before its first point runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from retro_platform.config.experiment import Experiment, check_sweep_keys, validate_tables
from retro_platform.config.overrides import set_dotted
from retro_platform.config.resolved import format_value
from retro_platform.config.rules import check_runner
from retro_platform.errors import ConfigError
from retro_platform.store.urls import hide_passwords


@dataclass(frozen=True)
class SweepPoint:
    """One point of the grid.

    Attributes:
        index: its position in the grid, from 0.
        values: each swept dotted key and its value at this point, in file order.
        experiment: the experiment with those values applied and an empty ``[sweep]``.
    """

    index: int
    values: dict[str, Any]
    experiment: Experiment

    @property
    def label(self) -> str:
        """``retriever.name=faiss-hnsw, train.lr=0.001``: the point in a run name or a log."""
        return _label(self.values)


def sweep_points(experiment: Experiment) -> list[SweepPoint]:
    """Every point of ``experiment``'s grid, each validated in full; a one-line
    :class:`ConfigError` names the first bad point. Without a sweep: one point with no values,
    ``experiment`` itself (:func:`check_experiment` checks it)."""
    grid = experiment.sweep.grid
    if not grid:
        return [SweepPoint(0, {}, experiment)]
    check_sweep_keys(grid)
    combinations = list(itertools.product(*grid.values()))
    points = []
    for index, combination in enumerate(combinations):
        values = dict(zip(grid, combination, strict=True))
        where = f"[sweep] point {index + 1} of {len(combinations)} ({_label(values)})"
        try:
            point = apply_values(experiment, values)
            point.check_plugins()
            check_runner(point)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        points.append(SweepPoint(index, values, point))
    return points


def check_experiment(experiment: Experiment) -> list[SweepPoint]:
    """Everything that can be checked without work: the plugins, the rules between tables, and
    every point of the sweep in full. Returns the points (one, with no sweep)."""
    experiment.check_plugins()
    check_runner(experiment)
    return sweep_points(experiment)


def apply_values(experiment: Experiment, values: dict[str, Any]) -> Experiment:
    """``experiment`` with each dotted key set to its value and no sweep, its tables validated
    (plugins and cross-table rules are not checked here)."""
    data = experiment.model_dump(exclude={"sweep"})
    for key, value in values.items():
        set_dotted(data, tuple(key.split(".")), value)
    return validate_tables(data, base_dir=experiment.base_dir, source=experiment.source)


def _label(values: dict[str, Any]) -> str:
    # a swept store.url is shown, like every URL, without its password
    return ", ".join(
        f"{key}={format_value(hide_passwords(value))}" for key, value in values.items()
    )
