"""``--set KEY=VALUE``: change any key of an experiment file from the command line.

``KEY`` is a dotted key (``train.steps``, ``model.positional_encoding_options.slope``,
``sweep.train.lr``), read with TOML's own key syntax so a quoted part works too. ``VALUE`` is a
TOML value (``100``, ``1e-3``, ``true``, ``[1, 2]``, ``"x"``, ``{steps = 5}``); text that is not
one (``faiss-hnsw``, ``sqlite:///x.db``) is taken as a plain string. Overrides are applied in
order to the parsed file, before validation, so a later one wins and a bad value gets the same
error as in the file.
"""

from __future__ import annotations

import datetime
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from retro_platform.errors import ConfigError


@dataclass(frozen=True)
class Override:
    """One ``--set``: the key's parts and the parsed value."""

    key: tuple[str, ...]
    value: Any
    text: str

    @property
    def dotted(self) -> str:
        return ".".join(self.key)


def parse_override(text: str) -> Override:
    """Parse ``KEY=VALUE``; a malformed one is a one-line :class:`ConfigError` naming it."""
    key_text, equals, value_text = text.partition("=")
    if not equals:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.steps=100")
    key = _parse_key(key_text.strip())
    if key is None:
        raise ConfigError(
            f"--set {text!r}: {key_text.strip()!r} is not a dotted key such as train.steps"
        )
    return Override(key, parse_value(value_text.strip()), text)


def parse_value(text: str) -> Any:
    """A TOML value, or ``text`` itself when it is not one (or is a date: no key takes one)."""
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    if set(parsed) != {"value"}:  # text that smuggled in a second line
        return text
    value = parsed["value"]
    if isinstance(value, datetime.date | datetime.time):
        return text
    return value


def _parse_key(text: str) -> tuple[str, ...] | None:
    if not text:
        return None
    try:
        parsed = tomllib.loads(f"{text} = 0")
    except tomllib.TOMLDecodeError:
        return None
    parts: list[str] = []
    node: Any = parsed
    while isinstance(node, dict):
        if len(node) != 1:
            return None
        [(part, node)] = node.items()
        parts.append(part)
    return tuple(parts) if all(parts) else None


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``data`` (a parsed experiment file, changed in place and returned) with every
    override applied in order."""
    for text in overrides:
        override = parse_override(text)
        try:
            set_dotted(data, override.key, override.value)
        except ConfigError as error:
            raise ConfigError(f"--set {text!r}: {error}") from None
    return data


def set_dotted(data: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    """Set ``data[key[0]][key[1]]... = value``, making missing tables on the way.

    Under ``sweep`` the rest of the key is one dotted name (``sweep.train.lr`` sets the grid
    of ``train.lr``), whichever way the file wrote the sweep's keys.
    """
    if key[0] == "sweep" and len(key) > 1:
        sweep = data.get("sweep", {})
        if not isinstance(sweep, dict):
            raise ConfigError("sweep is not a table")
        data["sweep"] = {**flatten_sweep(sweep), ".".join(key[1:]): value}
        return
    node = data
    for depth, part in enumerate(key[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(key[: depth + 1])
            raise ConfigError(f"{where} is {child!r}, not a table")
        node = child
    node[key[-1]] = value


def flatten_sweep(sweep: dict[str, Any]) -> dict[str, Any]:
    """A ``[sweep]`` table with nested tables flattened to dotted keys.

    TOML reads a bare dotted key (``retriever.name = [...]``) as nested tables; a quoted one
    (``"retriever.name" = [...]``) as one key. Both mean the same grid axis.
    """
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and (value or not prefix):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", sweep)
    return flat
