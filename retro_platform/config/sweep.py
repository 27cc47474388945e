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
        """``name=faiss-hnsw,lr=0.001``: the point's MLflow run name, in logs and tables too
        (see :func:`point_name`)."""
        return point_name(self.values)


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
        # an error names the keys in full, as the file spells them (names are for the UI)
        shown = ", ".join(f"{key}={format_value(hide_passwords(v))}" for key, v in values.items())
        where = f"[sweep] point {index + 1} of {len(combinations)} ({shown})"
        try:
            point = apply_values(experiment, values)
            point.check_plugins()
            check_runner(point)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        points.append(SweepPoint(index, values, point))
    _check_names(points)
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
    point = validate_tables(data, base_dir=experiment.base_dir, source=experiment.source)
    return point.model_copy(update={"overrides": experiment.overrides})


def point_name(values: dict[str, Any]) -> str:
    """A sweep point's short name, its MLflow run name: ``neighbours=none,lr=0.0003``.

    Each swept key by its last part, or by as many of its last parts as tell it apart from the
    other swept keys (``retriever.name=faiss-flat,embedder.name=hashing``); each value as the
    params show it (:func:`~retro_platform.config.resolved.format_value`), a boolean as ``on``
    or ``off``. Points of one grid have different names (:func:`sweep_points` checks it).
    """
    keys = list(values)
    return ",".join(f"{_short_key(key, keys)}={_short_value(values[key])}" for key in keys)


def _short_key(key: str, keys: list[str]) -> str:
    parts = key.split(".")
    for count in range(1, len(parts)):
        tail = parts[-count:]
        if not any(other.split(".")[-count:] == tail for other in keys if other != key):
            return ".".join(tail)
    return key


def _short_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return format_value(hide_passwords(value))  # a swept store.url, like every URL


def _check_names(points: list[SweepPoint]) -> None:
    """Two points of one name are one configuration listed twice: refused, not run twice."""
    seen: dict[str, int] = {}
    for point in points:
        first = seen.setdefault(point.label, point.index)
        if first != point.index:
            raise ConfigError(
                f"[sweep] points {first + 1} and {point.index + 1} are the same "
                f"({point.label}): a swept key lists one value twice"
            )
