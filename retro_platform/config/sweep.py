"""``[sweep]``: the grid of an experiment file, one fully validated experiment per point.

The grid is the product of every swept key's values, keys in file order (the last key varies
fastest). Each point is the file with its values applied and no sweep, validated exactly like a
file of its own (tables, plugin options, the rules between tables), so a sweep with one bad
point fails before its first point runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, get_origin

from retro_platform.config.experiment import (
    PLUGIN_TABLES,
    TABLES,
    Experiment,
    table_model,
    validate_tables,
)
from retro_platform.config.overrides import set_dotted
from retro_platform.errors import ConfigError, did_you_mean


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
    ``experiment`` itself (check it with ``check_plugins`` and ``check_runner``)."""
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
            point.check_runner()
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        points.append(SweepPoint(index, values, point))
    return points


def apply_values(experiment: Experiment, values: dict[str, Any]) -> Experiment:
    """``experiment`` with each dotted key set to its value and no sweep, its tables validated
    (plugins and cross-table rules are not checked here)."""
    data = experiment.model_dump(exclude={"sweep"})
    for key, value in values.items():
        set_dotted(data, tuple(key.split(".")), value)
    return validate_tables(data, base_dir=experiment.base_dir, source=experiment.source)


def check_sweep_keys(grid: dict[str, Any]) -> None:
    """Every swept key must name a key of a table: a typed table's own key (or a key inside
    one of its dictionaries, such as ``model.positional_encoding_options.slope``), or any key
    of a plugin table, whose plugin then validates it at every point."""
    for key in grid:
        table, _, rest = key.partition(".")
        if table not in TABLES or table == "sweep":
            tables = [name for name in TABLES if name != "sweep"]
            raise ConfigError(
                f"[sweep] {key!r}: unknown table {table!r}{did_you_mean(table, tables)}"
            )
        model = table_model(table)
        if model is None:
            if table not in PLUGIN_TABLES:  # pragma: no cover - every table is one or the other
                raise ConfigError(f"[sweep] {key!r}: [{table}] cannot be swept")
            continue
        field, _, inner = rest.partition(".")
        if field not in model.model_fields:
            known = list(model.model_fields)
            raise ConfigError(
                f"[sweep] {key!r}: [{table}] has no key {field!r}{did_you_mean(field, known)}"
            )
        if inner and get_origin(model.model_fields[field].annotation) is not dict:
            raise ConfigError(
                f"[sweep] {key!r}: [{table}] {field} is not a table; sweep {table}.{field}"
            )


def _label(values: dict[str, Any]) -> str:
    from retro_platform.config.resolved import format_value

    return ", ".join(f"{key}={format_value(value)}" for key, value in values.items())
