"""The plugin manager: one loading path, allow-listing, and plugins that fail without harm."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from retro_platform import hookspecs, plugins
from retro_platform.errors import ConfigError, PluginConflictError, UnknownPluginError
from retro_platform.protocols import PositionalEncoding

BUILTIN_NAMES = {"rotary", "learned-absolute", "alibi", "t5-relative-bias", "nope"}

PE_KWARGS = dict(role="decoder", dim=8, heads=2, dim_head=4, max_positions=32, causal=True)

GOOD_PLUGIN = """
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PositionalEncoding

class Shifted(PositionalEncoding):
    pass

@hookimpl
def register_positional_encodings(register):
    register("shifted", Shifted)
"""

BROKEN_IMPORT = "raise ImportError('No module named torch_nightly_only')\n"


def _stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


@pytest.fixture(autouse=True)
def fresh_plugins() -> None:
    """Each test loads from scratch, so a test sees the warnings its own plugins cause."""
    plugins.reset_plugins()


# --- built-ins and entry points -------------------------------------------------------------


def test_builtins_register_all_five_names_through_the_shared_path() -> None:
    registry = plugins.get_registry("positional_encodings")
    assert set(registry) == BUILTIN_NAMES
    for registration in registry.values():
        assert registration.plugin in plugins.DEFAULT_PLUGINS
        assert registration.distribution == "retro-platform"
        assert issubclass(registration.factory, PositionalEncoding)
    info = {p["name"]: p for p in plugins.plugin_info() if p["status"] == plugins.LOADED}
    assert list(info) == list(plugins.DEFAULT_PLUGINS)
    assert all(plugin["builtin"] and plugin["reason"] is None for plugin in info.values())
    assert plugins.load_errors() == []


def test_registration_is_frozen_and_registry_is_a_copy() -> None:
    registration = plugins.get_positional_encoding("rotary")
    with pytest.raises(dataclasses.FrozenInstanceError):
        registration.name = "other"  # type: ignore[misc]
    plugins.get_registry("positional_encodings").clear()
    assert "rotary" in plugins.get_registry("positional_encodings")


def test_third_party_entry_points_are_skipped_in_tests_by_default() -> None:
    assert "sinusoidal" not in plugins.get_registry("positional_encodings")
    info = plugins.plugin_info()
    assert all(plugin["builtin"] for plugin in info if plugin["status"] == plugins.LOADED)
    [skipped] = [plugin for plugin in info if plugin["name"] == "sinusoidal"]
    assert skipped["status"] == plugins.DISABLED
    assert skipped["reason"] == "is disabled: RETRO_PLATFORM_LOAD_PLUGINS does not name it"


def test_installed_sinusoidal_plugin_is_discovered(third_party_plugins: None) -> None:
    registration = plugins.get_positional_encoding("sinusoidal")
    assert registration.plugin == "sinusoidal"
    assert registration.distribution == "retro-platform-sinusoidal"
    encoding = registration.factory(**PE_KWARGS)
    assert isinstance(encoding, PositionalEncoding)
    info = next(p for p in plugins.plugin_info() if p["name"] == "sinusoidal")
    assert info["builtin"] is False
    assert info["hooks"] == ["register_positional_encodings"]
    assert info["registers"] == {"positional_encodings": ["sinusoidal"]}


def test_a_third_party_and_a_builtin_are_loaded_alike(
    third_party_plugins: None, plugin_dist: Callable[[str, str], Path]
) -> None:
    plugin_dist("shifted-plugin", GOOD_PLUGIN)
    info = {plugin["name"]: plugin for plugin in plugins.plugin_info()}
    third_party = info["shifted_plugin"]
    builtin = info[plugins.DEFAULT_PLUGINS[0]]
    assert third_party.keys() == builtin.keys()
    assert (third_party["distribution"], third_party["version"]) == ("shifted-plugin", "1.0")
    assert plugins.get_positional_encoding("shifted").plugin == "shifted_plugin"


# --- the allow-list -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "allow", ["sinusoidal", "retro-platform-sinusoidal", " Retro_Platform.Sinusoidal ,"]
)
def test_allow_list_by_entry_point_or_distribution_name(
    monkeypatch: pytest.MonkeyPatch, plugin_dist: Callable[[str, str], Path], allow: str
) -> None:
    plugin_dist("shifted-plugin", GOOD_PLUGIN)
    monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, allow)
    names = set(plugins.get_registry("positional_encodings"))
    assert names == BUILTIN_NAMES | {"sinusoidal"}


def test_empty_allow_list_loads_builtins_only(
    monkeypatch: pytest.MonkeyPatch, plugin_dist: Callable[[str, str], Path]
) -> None:
    plugin_dist("shifted-plugin", GOOD_PLUGIN)
    monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, "")
    assert set(plugins.get_registry("positional_encodings")) == BUILTIN_NAMES


def test_allow_list_naming_a_missing_plugin_warns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, "sinusiodal")
    plugins.load_plugins()
    [line] = _stderr_lines(capsys)
    assert "'sinusiodal'" in line
    assert "not installed (did you mean 'sinusoidal'?)" in line


# --- plugins that go wrong ------------------------------------------------------------------


def test_broken_plugin_is_named_once_with_a_disable_hint_and_the_rest_load(
    third_party_plugins: None,
    plugin_dist: Callable[[str, str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plugin_dist("broken-plugin", BROKEN_IMPORT)
    plugin_dist("shifted-plugin", GOOD_PLUGIN)

    names = set(plugins.get_registry("positional_encodings"))

    assert names == BUILTIN_NAMES | {"sinusoidal", "shifted"}
    [line] = _stderr_lines(capsys)
    assert line.startswith("Warning: plugin 'broken_plugin' (from broken-plugin) failed to load")
    assert "ImportError: No module named torch_nightly_only" in line
    assert "set RETRO_PLATFORM_DISABLE_PLUGINS=broken-plugin" in line
    assert "retro-platform uninstall broken-plugin" in line
    [error] = plugins.load_errors()
    assert isinstance(error, plugins.PluginLoadError)
    assert (error.plugin, error.distribution) == ("broken_plugin", "broken-plugin")
    plugins.load_plugins()
    plugins.get_registry("positional_encodings")
    assert _stderr_lines(capsys) == []  # reported once


def test_hook_that_raises_loses_only_its_own_names(
    third_party_plugins: None,
    plugin_dist: Callable[[str, str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plugin_dist(
        "half-plugin",
        """
        from retro_platform.hookspecs import hookimpl
        from retro_platform.protocols import PositionalEncoding

        @hookimpl
        def register_positional_encodings(register):
            register("half", PositionalEncoding)
            raise RuntimeError("config file\\nmissing")
        """,
    )
    names = set(plugins.get_registry("positional_encodings"))
    assert "half" not in names
    assert names >= BUILTIN_NAMES
    [line] = _stderr_lines(capsys)
    assert "'half_plugin'" in line
    assert "failed in register_positional_encodings: RuntimeError: config file missing" in line


def test_duplicate_name_keeps_the_first_and_names_both_plugins(
    third_party_plugins: None,
    plugin_dist: Callable[[str, str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plugin_dist(
        "rival-plugin",
        """
        from retro_platform.hookspecs import hookimpl
        from retro_platform.protocols import PositionalEncoding

        @hookimpl
        def register_positional_encodings(register):
            register("rotary", PositionalEncoding)
            register("rival", PositionalEncoding)
        """,
    )
    rotary = plugins.get_positional_encoding("rotary")
    assert rotary.plugin == "retro_platform.default_plugins.positional_encodings.rotary"
    assert plugins.get_positional_encoding("rival").plugin == "rival_plugin"
    [error] = plugins.load_errors()
    assert isinstance(error, PluginConflictError)
    message = str(error)
    assert "'rotary'" in message
    assert "'retro_platform.default_plugins.positional_encodings.rotary'" in message
    assert "'rival_plugin'" in message
    assert "retro-platform uninstall rival-plugin" in message
    assert _stderr_lines(capsys) == [f"Warning: {message}"]


@pytest.mark.parametrize("bad", ["Rotary Two", "", "-dash", "UPPER"])
def test_invalid_names_are_refused(
    third_party_plugins: None, plugin_dist: Callable[[str, str], Path], bad: str
) -> None:
    plugin_dist(
        "badname-plugin",
        f"""
        from retro_platform.hookspecs import hookimpl
        from retro_platform.protocols import PositionalEncoding

        @hookimpl
        def register_positional_encodings(register):
            register({bad!r}, PositionalEncoding)
        """,
    )
    assert set(plugins.get_registry("positional_encodings")) == BUILTIN_NAMES | {"sinusoidal"}
    [error] = plugins.load_errors()
    assert f"invalid positional encoding name {bad!r}" in str(error)


def test_misspelt_hook_is_reported_with_a_suggestion(
    third_party_plugins: None, plugin_dist: Callable[[str, str], Path]
) -> None:
    plugin_dist(
        "typo-plugin",
        """
        from retro_platform.hookspecs import hookimpl

        @hookimpl
        def register_positional_encoding(register):
            register("never", object)
        """,
    )
    [error] = plugins.load_errors()
    assert "unknown hook 'register_positional_encoding'" in str(error)
    assert "did you mean 'register_positional_encodings'" in str(error)


def test_plugin_that_looks_up_a_registry_while_loading_fails_alone(
    third_party_plugins: None, plugin_dist: Callable[[str, str], Path]
) -> None:
    plugin_dist(
        "eager-plugin",
        """
        from retro_platform.plugins import get_registry
        get_registry("positional_encodings")
        """,
    )
    assert "rotary" in plugins.get_registry("positional_encodings")
    [error] = plugins.load_errors()
    assert "'eager_plugin'" in str(error)
    assert "while plugins were loading" in str(error)


# --- look-ups -------------------------------------------------------------------------------


def test_unknown_name_lists_the_installed_ones_with_a_suggestion() -> None:
    with pytest.raises(UnknownPluginError) as caught:
        plugins.get_positional_encoding("rotery")
    message = str(caught.value)
    assert "\n" not in message
    assert "unknown positional encoding 'rotery' (did you mean 'rotary'?)" in message
    assert message.endswith("installed: alibi, learned-absolute, nope, rotary, t5-relative-bias")
    assert caught.value.exit_code == 2


def test_unknown_family_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="did you mean 'positional_encodings'"):
        plugins.get_registry("positional_encoding")


def test_every_register_hook_has_a_family_and_every_family_a_hook() -> None:
    register_hooks = {name for name in hookspecs.hook_names() if name.startswith("register_")}
    assert register_hooks == {f"register_{family}" for family in plugins.FAMILIES}


def test_concurrent_first_look_ups_load_once() -> None:
    results: list[dict[str, plugins.Registration]] = []

    def look_up() -> None:
        results.append(plugins.get_registry("positional_encodings"))

    threads = [threading.Thread(target=look_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(result == results[0] for result in results)
    assert len(plugins.pm.get_plugins()) == len(plugins.DEFAULT_PLUGINS)


def test_plugin_that_exits_at_import_does_not_stop_the_others(
    third_party_plugins: None, plugin_dist: Callable[[str, str], Path]
) -> None:
    plugin_dist("exiting-plugin", "import sys\nsys.exit('no GPU found')\n")
    assert "sinusoidal" in plugins.get_registry("positional_encodings")
    [error] = plugins.load_errors()
    assert "'exiting_plugin'" in str(error)
    assert "SystemExit: no GPU found" in str(error)


# --- disabling one plugin, and experiments that name a plugin that did not load -------------

BROKEN_RETRIEVER = "raise ImportError('libscann.so: cannot open shared object file')\n"


@pytest.mark.parametrize("deny", ["shifted", "shifted-plugin", "sinusoidal, Shifted.Plugin"])
def test_a_plugin_is_disabled_by_entry_point_or_distribution_name(
    third_party_plugins: None,
    plugin_dist: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    deny: str,
) -> None:
    plugin_dist("shifted-plugin", GOOD_PLUGIN, entry_point="shifted")
    monkeypatch.setenv(plugins.DISABLE_PLUGINS_ENV, deny)
    names = set(plugins.get_registry("positional_encodings"))
    assert names == BUILTIN_NAMES | ({"sinusoidal"} - set(deny.split(", ")))
    [info] = [p for p in plugins.plugin_info() if p["name"] == "shifted"]
    assert (info["status"], info["distribution"]) == (plugins.DISABLED, "shifted-plugin")
    assert info["reason"] == "is disabled by RETRO_PLATFORM_DISABLE_PLUGINS"
    with pytest.raises(UnknownPluginError) as caught:
        plugins.get_positional_encoding("shifted")
    assert str(caught.value) == (
        "positional encoding 'shifted' is not available: plugin 'shifted' "
        "(from shifted-plugin 1.0) is disabled by RETRO_PLATFORM_DISABLE_PLUGINS"
    )


def test_disabling_a_broken_plugin_silences_it(
    third_party_plugins: None,
    plugin_dist: Callable[[str, str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plugin_dist("broken-plugin", BROKEN_IMPORT)
    monkeypatch.setenv(plugins.DISABLE_PLUGINS_ENV, "broken-plugin")
    assert "sinusoidal" in plugins.get_registry("positional_encodings")
    assert plugins.load_errors() == []
    assert _stderr_lines(capsys) == []


def test_disabling_a_name_that_matches_nothing_warns(
    third_party_plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtin = plugins.DEFAULT_PLUGINS[0]
    monkeypatch.setenv(plugins.DISABLE_PLUGINS_ENV, f"sinusiodal,{builtin}")
    assert "sinusoidal" in plugins.get_registry("positional_encodings")
    messages = sorted(str(error) for error in plugins.load_errors())
    assert messages[0].startswith(f"plugin '{builtin}' is named in ")
    assert "built-in plugins always load" in messages[0]
    assert (
        "'sinusiodal' is named in RETRO_PLATFORM_DISABLE_PLUGINS but is not installed"
        in (messages[1])
    )


def test_naming_a_broken_plugins_retriever_says_it_failed_to_load(
    third_party_plugins: None, plugin_dist: Callable[[str, str], Path]
) -> None:
    plugin_dist("retro-platform-annoy", BROKEN_RETRIEVER, entry_point="annoy")
    with pytest.raises(UnknownPluginError) as caught:
        plugins.get_registration("retrievers", "annoy")
    assert str(caught.value) == (
        "retriever 'annoy' is not available: plugin 'annoy' (from retro-platform-annoy 1.0) "
        "failed to load: ImportError: libscann.so: cannot open shared object file; fix it or "
        "remove it with: retro-platform uninstall retro-platform-annoy"
    )
    # a name no plugin fits is unknown, with a reminder that a plugin is broken
    with pytest.raises(UnknownPluginError, match=r"broken plugins: annoy \(see: retro-platform"):
        plugins.get_registration("retrievers", "faiss-lsh")


def test_disabling_a_builtin_by_a_name_it_registers_says_builtins_always_load(
    third_party_plugins: None,
    plugin_dist: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # users know built-ins by the names they register (and the distribution), not by module
    plugin_dist("shifted-plugin", GOOD_PLUGIN, entry_point="shifted")
    monkeypatch.setenv(plugins.DISABLE_PLUGINS_ENV, "rotary,faiss-flat,retro-platform,shifed")
    plugins.load_plugins()
    said = {error.plugin: str(error) for error in plugins.load_errors()}
    for name in ("rotary", "faiss-flat", "retro-platform"):
        assert "but built-in plugins always load" in said[name], said[name]
    assert "is not installed (did you mean 'shifted'?)" in said["shifed"]


OPTIONS_BREAKING_PLUGIN = """
import pydantic

from retro_platform.hookspecs import hookimpl
from retro_platform.default_plugins.embedders.hashing import HashingEmbedder, HashingOptions


class DictOptions(HashingEmbedder):
    Options = dict


class PlainModelOptions(HashingEmbedder):
    class Options(pydantic.BaseModel):  # would ignore a misspelled option without a word
        dimension: int = 64


class NoOptions:
    def __init__(self, options):
        pass


class BytesOptions(HashingEmbedder):
    class Options(HashingOptions):
        salt: bytes = b"\\xff"  # not JSON: the store and MLflow record every option


@hookimpl
def register_embedders(register):
    register("dict-options", DictOptions)
    register("plain-model-options", PlainModelOptions)
    register("no-options", NoOptions)
    register("bytes-options", BytesOptions)
"""


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("dict-options", "Options must be a subclass of retro_platform.protocols.PluginOptions"),
        ("plain-model-options", "must be a subclass of retro_platform.protocols.PluginOptions"),
        ("no-options", "Options must be a subclass of retro_platform.protocols.PluginOptions"),
        ("bytes-options", "the options of embedder 'bytes-options' cannot be recorded as JSON"),
    ],
)
def test_a_plugin_whose_options_model_breaks_the_protocol_is_one_line(
    third_party_plugins: None, plugin_dist: Callable[..., Path], name: str, said: str
) -> None:
    plugin_dist("retro-platform-odd-options", OPTIONS_BREAKING_PLUGIN, entry_point="odd-options")
    with pytest.raises(ConfigError) as caught:
        plugins.plugin_options("embedders", {"name": name, "dimension": 64}, table_name="embedder")
    message = str(caught.value)
    assert said in message and "\n" not in message
    assert "this is a bug in plugin 'odd-options' (retro-platform-odd-options 1.0)" in message


def test_a_missing_required_option_names_the_key_not_the_whole_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        plugins.plugin_options("corpus_readers", {"name": "jsonl", "text_field": "body"},
                               table_name="corpus", base_dir=tmp_path)  # fmt: skip
    assert str(caught.value) == (
        "[corpus] path: required, no default, for corpus reader 'jsonl': set path = ..."
    )


UNDECORATED_HOOK = """
from retro_platform.protocols import PositionalEncoding


def register_positional_encodings(register):  # no @hookimpl: pluggy ignores it
    register("undecorated", PositionalEncoding)
"""


def test_a_hook_function_without_hookimpl_is_reported(
    third_party_plugins: None, plugin_dist: Callable[..., Path]
) -> None:
    plugin_dist("retro-platform-undecorated", UNDECORATED_HOOK, entry_point="undecorated")
    assert "undecorated" not in plugins.get_registry("positional_encodings")
    [error] = [e for e in plugins.load_errors() if e.plugin == "undecorated"]
    assert str(error).startswith(
        "plugin 'undecorated' (from retro-platform-undecorated) defines "
        "register_positional_encodings without the @hookimpl decorator"
    )


NOT_AN_ENCODING = """
from retro_platform.hookspecs import hookimpl


def nothing(**kwargs):  # "any callable that takes the same keyword arguments and returns one"
    return None


@hookimpl
def register_positional_encodings(register):
    register("returns-none", nothing)
"""


def test_a_positional_encoding_factory_that_returns_no_encoding_is_one_line(
    third_party_plugins: None, plugin_dist: Callable[..., Path]
) -> None:
    # nn.ModuleDict took the None, and the model failed at its first forward (AttributeError)
    from retro_platform import RETRO

    plugin_dist("retro-platform-returns-none", NOT_AN_ENCODING, entry_point="returns-none")
    with pytest.raises(ConfigError) as caught:
        RETRO(num_tokens=32, max_seq_len=64, enc_dim=16, enc_depth=1, dec_depth=2, dec_dim=16,
              dec_cross_attn_layers=(2,), heads=2, dim_head=8, chunk_size=16,
              positional_encoding="returns-none")  # fmt: skip
    assert str(caught.value) == (
        "positional encoding 'returns-none': its factory returned NoneType for role 'decoder', "
        "not a retro_platform.protocols.PositionalEncoding; this is a bug in its plugin "
        "(retro-platform-returns-none)"
    )


INFINITE_OPTION = """
from typing import ClassVar

from retro_platform.hookspecs import hookimpl
from retro_platform.default_plugins.retrievers.faiss_flat import FaissFlatRetriever, FlatOptions


class ThresholdOptions(FlatOptions):
    search_options: ClassVar[frozenset[str]] = frozenset({"min_score"})
    min_score: float = float("-inf")


class Threshold(FaissFlatRetriever):
    Options = ThresholdOptions


@hookimpl
def register_retrievers(register):
    register("threshold", Threshold)
"""


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (float("nan"), "[retriever] min_score: nan holds NaN or infinity"),
        (None, "[retriever] min_score: -inf holds NaN or infinity"),  # the plugin's default
        (0.5, None),
    ],
)
def test_an_option_of_nan_or_infinity_is_refused_on_every_store(
    third_party_plugins: None, plugin_dist: Callable[..., Path], value: float | None, said: str
) -> None:
    # SQLite stored -Infinity in the options' JSON column; PostgreSQL refused the row, and the
    # user was told "cannot use the store database" at index time
    plugin_dist("retro-platform-threshold", INFINITE_OPTION, entry_point="threshold")
    table = {"name": "threshold"} | ({} if value is None else {"min_score": value})
    if said is None:
        plugins.plugin_options("retrievers", table, table_name="retriever")
        return
    with pytest.raises(ConfigError) as caught:
        plugins.plugin_options("retrievers", table, table_name="retriever")
    assert str(caught.value).startswith(said)
    assert ("it is the plugin's default" in str(caught.value)) == (value is None)


def test_a_clash_of_two_third_party_plugins_says_how_to_use_the_other_one(
    third_party_plugins: None, plugin_dist: Callable[..., Path]
) -> None:
    # the first distribution by name wins; the hint used to offer only to disable the loser,
    # which silences the warning but never gets the user the plugin they installed last
    plugin_dist("zeta-shifted", GOOD_PLUGIN, entry_point="zeta")
    plugin_dist("alpha-shifted", GOOD_PLUGIN.replace("Shifted", "Other"), entry_point="alpha")
    assert plugins.get_positional_encoding("shifted").distribution == "alpha-shifted"
    [error] = [e for e in plugins.load_errors() if isinstance(e, PluginConflictError)]
    assert str(error).endswith(
        "using 'alpha'; to disable 'zeta', set RETRO_PLATFORM_DISABLE_PLUGINS=zeta-shifted or "
        "run: retro-platform uninstall zeta-shifted; to use 'zeta' instead, set "
        "RETRO_PLATFORM_DISABLE_PLUGINS=alpha-shifted"
    )
