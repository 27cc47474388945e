"""A plugin table of an experiment file, validated against its plugin once.

``[corpus]``, ``[tokenizer]``, ``[embedder]`` and ``[retriever]`` hold ``name`` plus the
plugin's own options. :meth:`~retro_platform.config.experiment.Experiment.plugin_table` looks
the name up in the registry and validates the options with the plugin's ``Options`` model the
first time a table is asked for, and keeps the result, so that every stage of a run reads the
same validated object instead of validating the table again.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from retro_platform.errors import UnknownPluginError
from retro_platform.protocols.options import options_dict, result_options, stored_options

if TYPE_CHECKING:
    from retro_platform.plugins import Registration


@dataclass(frozen=True)
class PluginTable:
    """One plugin table, validated.

    Attributes:
        table: the table's name in the experiment file (``"retriever"``).
        registration: the plugin it names, from the registry.
        validated: the plugin's ``Options`` model holding the table's other keys.
    """

    table: str
    registration: Registration
    validated: BaseModel

    @property
    def name(self) -> str:
        """The registered name of the plugin."""
        return self.registration.name

    @cached_property
    def options(self) -> dict[str, Any]:
        """Every option with its default filled in: what the store and MLflow record."""
        return options_dict(self.validated)

    @cached_property
    def result_options(self) -> dict[str, Any]:
        """The options without the plugin's runtime ones (batch size, device, threads): what
        decides a result, e.g. the neighbours a retriever's search returns."""
        return result_options(self.validated)

    @cached_property
    def stored_options(self) -> dict[str, Any]:
        """The options without the runtime and search-time ones: what fingerprints a stored
        corpus, embedding set or index."""
        return stored_options(self.validated)

    @property
    def source(self) -> dict[str, str]:
        """Which plugin this is and where it came from: ``name``, ``distribution`` and
        ``version``, what a stored result and an MLflow run record."""
        registration = self.registration
        return {
            "name": registration.name,
            "distribution": registration.distribution,
            "version": registration.version,
        }

    def made_otherwise(self, recorded: dict[str, str] | None) -> str | None:
        """How the plugin that made a stored result (``recorded``: its :attr:`source`) differs
        from this one, in words: another distribution, or another version of a third-party
        one (the platform's own plugins take its version, which moves with every release);
        None when neither, or when the result is older than the record."""
        from retro_platform.plugins import DISTRIBUTION, normalize  # lazy, as below

        if not recorded:
            return None
        now = self.source
        then = {key: recorded.get(key, "?") for key in ("distribution", "version")}
        if normalize(then["distribution"]) != normalize(now["distribution"]) or (
            normalize(now["distribution"]) != normalize(DISTRIBUTION)
            and then["version"] != now["version"]
        ):
            return (
                f"made by {then['distribution']} {then['version']}, and this experiment's "
                f"{self.table} {self.name!r} now comes from {now['distribution']} {now['version']}"
            )
        return None

    def build(self, *args: Any) -> Any:
        """The plugin itself: ``factory(options, *args)``."""
        return self.registration.factory(self.validated, *args)


def validate_plugin_table(
    table: str, family: str, values: dict[str, Any], base_dir: Path
) -> PluginTable:
    """Look ``values["name"]`` up in ``family`` and validate the other keys; every problem is
    a one-line :class:`~retro_platform.errors.ConfigError` naming the table and the key."""
    # lazy: keeps the plugin registry out of retro-platform --help
    from retro_platform.plugins import plugin_options

    try:
        registration, validated = plugin_options(
            family, values, table_name=table, base_dir=base_dir
        )
    except UnknownPluginError as error:  # the registry's message does not name the table
        raise UnknownPluginError(f"[{table}] name: {error}") from None
    return PluginTable(table, registration, validated)
