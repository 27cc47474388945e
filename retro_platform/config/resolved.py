"""The fully resolved configuration of an experiment: what a run logs as its parameters.

:func:`resolved_config` fills in every default, including each plugin's own options and the
positional encoding's, so two runs that differ in one key differ in exactly one parameter, and
a default that changes between versions shows up as a changed parameter. :func:`flatten_config`
turns it into MLflow parameters: dotted keys and strings formatted one way only, so the same
value always prints the same and runs line up in the compare view.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from retro_platform.config.experiment import PLUGIN_TABLES, TABLES, Experiment
from retro_platform.config.rules import encoding_options
from retro_platform.store.urls import (
    has_password,
    hide_passwords,
    hide_passwords_in_text,
    safe_url,
)

#: MLflow's limit on a parameter value's length.
MAX_VALUE_CHARS = 6000


def resolved_config(experiment: Experiment) -> dict[str, Any]:
    """Every table of ``experiment`` but ``[sweep]``, nested, JSON-ready, defaults filled in.

    Plugin tables hold ``name`` plus every option of that plugin; paths are absolute strings;
    the store's URL is its effective one with any password masked. The plugins must be valid
    (:meth:`Experiment.check_plugins`).
    """
    resolved: dict[str, Any] = {}
    for table in TABLES:
        if table == "sweep":
            continue
        if table in PLUGIN_TABLES:
            plugin = experiment.plugin_table(table)
            resolved[table] = {"name": plugin.name, **plugin.options}
        else:
            resolved[table] = getattr(experiment, table).model_dump(mode="json")
    resolved["store"]["url"] = safe_url(experiment.store.database_url)
    if experiment.mlflow.tracking_uri is not None:
        resolved["mlflow"]["tracking_uri"] = safe_url(experiment.mlflow.tracking_uri)
    model = resolved["model"]
    defaults = encoding_options(experiment.model.positional_encoding) or {}
    model["positional_encoding_options"] = {
        **{
            key: _jsonable(value)
            for key, value in defaults.items()
            if value is not inspect.Parameter.empty
        },
        **model["positional_encoding_options"],
    }
    return resolved


def logged_experiment_file(path: Path) -> str | None:
    """The experiment file as a run logs it: as written (comments and order kept), with each
    URL's password masked as :func:`~retro_platform.store.urls.safe_url` masks it everywhere
    else, so the file stays valid TOML and no password reaches the tracking store.

    None when a password cannot be masked in place (a URL written with TOML escapes): the run
    then logs ``resolved.json`` alone rather than the password.
    """
    text = path.read_bytes().decode("utf-8")
    original = tomllib.loads(text)
    urls = {value for value in _strings(original) if has_password(value)}
    for url in sorted(urls, key=len, reverse=True):  # a URL inside a longer one: longest first
        text = text.replace(url, safe_url(url))
    text = hide_passwords_in_text(text)  # and in comments
    try:
        # what was replaced must be exactly the passwords, wherever TOML put them
        if tomllib.loads(text) != hide_passwords(original):
            return None
    except tomllib.TOMLDecodeError:
        return None
    return text


def _strings(value: Any) -> list[str]:
    """Every string in a parsed TOML document, at any depth."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [text for inner in value for text in _strings(inner)]
    return []


def flatten_config(resolved: dict[str, Any]) -> dict[str, str]:
    """``{"train": {"lr": 0.001}}`` -> ``{"train.lr": "0.001"}``: nested tables become dotted
    keys (an empty one stays as ``"{}"``), values become :func:`format_value` strings."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = format_value(value)

    walk("", resolved)
    return flat


def format_value(value: Any) -> str:
    """One value as a parameter string, the same for the same value every time.

    Strings as they are; numbers in ``%.12g`` form (``0.001``, ``1e-05``, ``300``: an integral
    float prints like the integer, so ``1`` and ``1.0`` compare equal); booleans and None as
    JSON (``true``, ``null``); lists and tables as compact JSON with keys sorted and numbers in
    the same form. At most :data:`MAX_VALUE_CHARS` characters: a longer value is cut and ends
    with a hash of the whole, so two long values that differ still differ.
    """
    text = value if isinstance(value, str) else _json(value)
    if len(text) > MAX_VALUE_CHARS:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        tail = f"... sha256:{digest}"
        text = text[: MAX_VALUE_CHARS - len(tail)] + tail
    return text


def _json(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, dict):
        items = sorted((str(key), inner) for key, inner in value.items())
        return "{" + ", ".join(f"{json.dumps(k)}: {_json(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_json(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return format(value, ".12g")


def _jsonable(value: Any) -> Any:
    # the default of a plugin's keyword argument, as resolved_config's other values
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    return value
