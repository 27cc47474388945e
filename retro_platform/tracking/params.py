"""What a run records about its config: MLflow params (the flattened config) and tags.

MLflow limits what one ``log_batch`` call takes (100 params and tags) and how long a value may
be; MLflow itself would reject or silently cut a longer value, so a cut value here ends in
:data:`TRUNCATED` for anyone comparing runs to see.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import retro_platform
from retro_platform.errors import ConfigError

if TYPE_CHECKING:
    from retro_platform.config import Experiment

#: MLflow's limits (mlflow.utils.validation): params and tags per log_batch call, metrics per
#: call, the length of a param value, of a tag value and of a key.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
#: The end of a value cut to MLflow's limit.
TRUNCATED = "...[truncated]"

# MLflow accepts letters, digits, and _ - . space : / in keys
_BAD_KEY_CHARACTERS = re.compile(r"[^\w.\- :/]")
_GIT_TIMEOUT_S = 5.0


def truncate(value: str, limit: int) -> str:
    """``value``, or its start plus :data:`TRUNCATED` in ``limit`` characters."""
    if len(value) <= limit:
        return value
    return value[: limit - len(TRUNCATED)] + TRUNCATED


def mlflow_params(flat: Mapping[str, str]) -> dict[str, str]:
    """Params MLflow accepts from a flattened config (dotted key -> value as text).

    Values longer than MLflow's limit are cut (ending in :data:`TRUNCATED`); characters MLflow
    refuses in a key become ``_``. Raises :class:`ConfigError` if two keys then collide or a
    key is too long.
    """
    params: dict[str, str] = {}
    for key, value in flat.items():
        name = _BAD_KEY_CHARACTERS.sub("_", str(key))
        if len(name) > MAX_KEY:
            raise ConfigError(f"config key {key!r} is longer than MLflow's {MAX_KEY} characters")
        if name in params:
            raise ConfigError(
                f"config key {key!r} is {name!r} as an MLflow param, like another key: rename one"
            )
        params[name] = truncate(str(value), MAX_PARAM_VALUE)
    return params


def mlflow_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags with values cut to MLflow's limit."""
    return {str(key): truncate(str(value), MAX_TAG_VALUE) for key, value in tags.items()}


def batches(items: Mapping[str, str], size: int = PARAMS_PER_BATCH) -> Iterator[dict[str, str]]:
    """``items`` in dicts of at most ``size`` entries, in order."""
    pairs = list(items.items())
    for start in range(0, len(pairs), size):
        yield dict(pairs[start : start + size])


def tags_for(experiment: Experiment, store_id: str | int | None = None) -> dict[str, str]:
    """The tags that say what a run is made of, for filtering runs in the MLflow UI.

    ``retro.git_commit`` is there only when the experiment file is in a git work tree, and
    ``retro.store_id`` only when ``store_id`` is given.
    """
    tags = {
        "retro.retriever": str(experiment.retriever["name"]),
        "retro.embedder": str(experiment.embedder["name"]),
        "retro.tokenizer": str(experiment.tokenizer["name"]),
        "retro.positional_encoding": experiment.model.positional_encoding,
        "retro.corpus": str(experiment.corpus["name"]),
        "retro.version": package_version(),
    }
    tags.update(plugin_tags(experiment))
    commit = git_commit(Path(experiment.base_dir))
    if commit is not None:
        tags["retro.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit  # what the MLflow UI shows as the source
    if store_id is not None:
        tags["retro.store_id"] = str(store_id)
    return tags


def plugin_tags(experiment: Experiment) -> dict[str, str]:
    """``retro.<table>.distribution`` and ``retro.<table>.version`` of each plugin the run uses
    (``retro.retriever.distribution = retro-platform-scann``): a plugin upgrade that changes
    results can then be traced to the runs it touched."""
    # lazy: keeps the plugin registry out of retro-platform --help
    from retro_platform.config.experiment import PLUGIN_TABLES
    from retro_platform.plugins import get_positional_encoding

    sources = {table: experiment.plugin_table(table).registration for table in PLUGIN_TABLES}
    sources["positional_encoding"] = get_positional_encoding(experiment.model.positional_encoding)
    tags = {}
    for table, registration in sources.items():
        tags[f"retro.{table}.distribution"] = registration.distribution
        tags[f"retro.{table}.version"] = registration.version
    return tags


def package_version() -> str:
    try:
        return metadata.version("retro-platform")
    except metadata.PackageNotFoundError:
        return str(getattr(retro_platform, "__version__", "unknown"))


def git_commit(folder: Path) -> str | None:
    """The commit checked out in the git work tree holding ``folder``, or None."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None
