"""What every contract shares: the plugin's configuration attributes, its options rules and the
check that the installed registry maps ``registered_as`` to the plugin's class."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from retro_platform import plugins
from retro_platform.protocols.options import BASE_DIR, PluginOptions, options_dict


class PluginContract:
    """Base of the five contracts: the plugin's class and the name it registers."""

    #: The registry family (``plugins.FAMILIES``); set by each contract.
    family: ClassVar[str]
    #: The class the plugin registers.
    factory: ClassVar[Any] = None
    #: The name the plugin registers; when set, a test checks the installed registry.
    registered_as: ClassVar[str | None] = None

    def test_registered_name_maps_to_this_factory(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Rule: the installed registry maps ``registered_as`` to this ``factory``."""
        if self.registered_as is None:
            pytest.skip("registered_as is not set")
        registry = plugins.get_registry(self.family)
        if self.registered_as not in registry:
            registry = _registry_with_own_entry_point(self.family, self.factory, monkeypatch)
        if registry is None:
            pytest.skip(
                f"no installed entry point in group {plugins.ENTRY_POINT_GROUP!r} names module "
                f"{self.factory.__module__!r}: install the plugin (pip install -e .) to check "
                f"that {self.registered_as!r} is registered"
            )
        registration = registry.get(self.registered_as)
        assert registration is not None, (
            f"rule: the plugin registers {self.registered_as!r}; "
            f"registered {plugins.FAMILIES[self.family]}s: {sorted(registry)}"
        )
        assert registration.factory is self.factory, (
            f"rule: {self.registered_as!r} is registered to this factory, but maps to "
            f"{registration.factory!r} of plugin {registration.plugin!r}"
        )


class OptionsContract(PluginContract):
    """Base of the contracts of plugins built from an options model (all but positional
    encodings, which take keyword arguments)."""

    #: The experiment-table options (without ``name``), validated by ``factory.Options``.
    options: ClassVar[dict[str, Any]] = {}

    def option_table(self, tmp_path: Path) -> dict[str, Any]:
        """The options to build with (the corpus contract makes a source in ``tmp_path``)."""
        return dict(self.options)

    def make_options(self, tmp_path: Path) -> PluginOptions:
        """``factory.Options`` validated as the core does, relative paths from ``tmp_path``."""
        model = self.factory.Options
        return model.model_validate(self.option_table(tmp_path), context={BASE_DIR: tmp_path})

    # --- the rules every plugin with an options model keeps -----------------------------------

    def test_options_model_is_plugin_options(self, tmp_path: Path) -> None:
        """Rule: ``Options`` is a ``PluginOptions`` subclass and the given options validate."""
        model = getattr(self.factory, "Options", None)
        assert isinstance(model, type) and issubclass(model, PluginOptions), (
            "rule: the plugin's Options is a subclass of retro_platform.protocols.PluginOptions"
        )
        assert isinstance(self.make_options(tmp_path), model)

    def test_options_forbid_unknown_keys(self, tmp_path: Path) -> None:
        """Rule: an unknown option is refused, so a typo in an experiment file is an error."""
        table = {**self.option_table(tmp_path), "no_such_option_xyz": 1}
        try:
            self.factory.Options.model_validate(table, context={BASE_DIR: tmp_path})
        except ValidationError as error:
            assert error.errors()[0]["type"] == "extra_forbidden", (
                "rule: Options forbids unknown keys (refused for another reason)"
            )
        else:
            pytest.fail("rule: Options forbids unknown keys (extra='forbid'); it accepted one")

    def test_options_are_recorded_as_strict_json(self, tmp_path: Path) -> None:
        """Rule: every option, defaults included, is JSON without NaN or infinity: the store
        records them in a JSON column, and PostgreSQL refuses those values."""
        recorded = options_dict(self.make_options(tmp_path))
        try:
            json.dumps(recorded, allow_nan=False)
        except ValueError:
            bad = {k: v for k, v in recorded.items() if not _strict_json(v)}
            pytest.fail(f"rule: options hold no NaN or infinity (use None for 'none'); got {bad}")

    def test_runtime_options_are_fields(self) -> None:
        """Rule: every name in ``Options.runtime_options`` is a field of ``Options``."""
        model = self.factory.Options
        unknown = set(model.runtime_options) - set(model.model_fields)
        assert not unknown, f"rule: runtime_options names only real fields; not fields: {unknown}"

    def test_search_options_are_retriever_fields(self) -> None:
        """Rule: ``Options.search_options`` names only fields, of a retriever's options only
        (they are what a search reads but an index does not store), none also runtime."""
        model = self.factory.Options
        search = set(model.search_options)
        unknown = search - set(model.model_fields)
        assert not unknown, f"rule: search_options names only real fields; not fields: {unknown}"
        assert not search or self.family == "retrievers", (
            "rule: only a retriever has search_options (use runtime_options)"
        )
        both = search & set(model.runtime_options)
        assert not both, f"rule: an option is runtime or search-time, not both: {both}"


def _registry_with_own_entry_point(
    family: str, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, plugins.Registration] | None:
    """The registry with the entry point that names ``factory``'s module loaded, or None if no
    installed distribution declares one. The project's tests allow-list no third-party plugin
    (``RETRO_PLATFORM_LOAD_PLUGINS=""``), so the plugin's own is allowed for this one look-up."""
    module = factory.__module__
    names = [
        ep.name
        for ep in importlib.metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)
        if ep.value.partition(":")[0].strip() == module
    ]
    if not names:
        return None
    monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, ",".join(names))
    plugins.reset_plugins()
    try:
        return plugins.get_registry(family)
    finally:
        monkeypatch.undo()
        plugins.reset_plugins()  # the next look-up loads as the session's settings say


def _strict_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True
