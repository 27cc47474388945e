"""The plugin manager: loads built-in and third-party plugins and keeps one registry per family.

Built-in plugins (:data:`DEFAULT_PLUGINS`) and third-party ones (entry points in the group
``retro_platform``) go through the same function, :func:`_load_plugin`, so a built-in is a
working example of a third-party plugin and nothing about the two can drift apart.

Loading is lazy (the first registry look-up triggers it), happens once per process, and never
raises because of a plugin: a plugin that fails to import, whose hook raises, or that registers
a name already taken, is recorded (:func:`load_errors`) and reported once on stderr as one line
that names it and says how to disable it. The other plugins keep loading. (llm and datasette
crash their whole CLI on a broken plugin; a researcher should not lose the tool to one bad
``pip install``.)

``RETRO_PLATFORM_LOAD_PLUGINS`` allow-lists third-party plugins: a comma-separated list of
entry-point or distribution names. When it is set, even to an empty string, only those load;
built-ins always load. The project's own tests set it to ``""`` (see ``tests/conftest.py``) so
that whatever happens to be installed cannot change their outcome.
``RETRO_PLATFORM_DISABLE_PLUGINS`` does the opposite for a few: the third-party plugins it names
are not imported at all (the way out while a plugin is broken and cannot be uninstalled yet).

A plugin that did not load (broken, or disabled by either variable) is still listed by
:func:`plugin_info` with the reason, and an experiment that names one of its plugins is told
why it is missing instead of merely that the name is unknown.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from pydantic import ValidationError

from retro_platform import hookspecs
from retro_platform.errors import (
    ConfigError,
    PluginConflictError,
    RetroPlatformError,
    UnknownPluginError,
    did_you_mean,
)
from retro_platform.protocols.options import BASE_DIR, PluginOptions, options_dict

#: The allow-list environment variable (see the module docstring).
LOAD_PLUGINS_ENV = "RETRO_PLATFORM_LOAD_PLUGINS"

#: The deny-list environment variable: third-party plugins (entry-point or distribution names,
#: comma-separated) that must not load.
DISABLE_PLUGINS_ENV = "RETRO_PLATFORM_DISABLE_PLUGINS"

#: What :func:`plugin_info` says about each plugin.
LOADED, BROKEN, DISABLED = "loaded", "broken", "disabled"

#: The entry-point group third-party distributions declare their plugin module under.
ENTRY_POINT_GROUP = "retro_platform"

#: This project's own distribution: what built-in plugins report as theirs.
DISTRIBUTION = "retro-platform"

#: Built-in plugins, loaded first and in this order, exactly like third-party entry points.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "retro_platform.default_plugins.positional_encodings.rotary",
    "retro_platform.default_plugins.positional_encodings.learned_absolute",
    "retro_platform.default_plugins.positional_encodings.alibi",
    "retro_platform.default_plugins.positional_encodings.t5_relative_bias",
    "retro_platform.default_plugins.positional_encodings.nope",
    "retro_platform.default_plugins.corpus_readers.text_files",
    "retro_platform.default_plugins.corpus_readers.jsonl",
    "retro_platform.default_plugins.corpus_readers.python_stdlib",
    "retro_platform.default_plugins.corpus_readers.python_packages",
    "retro_platform.default_plugins.tokenizers.byte_level",
    "retro_platform.default_plugins.tokenizers.bpe",
    "retro_platform.default_plugins.tokenizers.pretrained",
    "retro_platform.default_plugins.embedders.sentence_transformer",
    "retro_platform.default_plugins.embedders.hashing",
    "retro_platform.default_plugins.retrievers.faiss_flat",
    "retro_platform.default_plugins.retrievers.faiss_ivfpq",
    "retro_platform.default_plugins.retrievers.faiss_hnsw",
    "retro_platform.default_plugins.retrievers.faiss_ivf_ondisk",
)

#: Registry families: family -> what one of its members is called in messages. The hook of a
#: family is ``register_<family>``; a new family needs that hookspec plus one line here.
FAMILIES: dict[str, str] = {
    "positional_encodings": "positional encoding",
    "corpus_readers": "corpus reader",
    "tokenizers": "tokenizer",
    "embedders": "embedder",
    "retrievers": "retriever",
}

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")

pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
pm.add_hookspecs(hookspecs)


@dataclass(frozen=True)
class Registration:
    """One name in a registry: what builds it and which plugin (and distribution) provided it."""

    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str
    version: str


class PluginLoadError(RetroPlatformError):
    """A plugin that could not be loaded or used; recorded and reported, never raised by loading.

    Its message is the one line printed on stderr. It is an exception so that a caller that
    wants to be strict can simply ``raise`` it.
    """

    def __init__(
        self, plugin: str, distribution: str | None, reason: str, *, hint: str | None = None
    ) -> None:
        self.plugin = plugin
        self.distribution = distribution
        self.reason = reason
        source = f" (from {distribution})" if distribution else ""
        super().__init__(
            f"plugin {plugin!r}{source} {reason}; {hint or _disable_hint(distribution)}"
        )


@dataclass
class _Plugin:
    """What we know about one loaded plugin, in load order."""

    name: str
    module: str
    distribution: str
    version: str
    obj: object = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    #: Why the plugin is not (wholly) usable: a hook that raised. None when all went well.
    problem: str | None = None


@dataclass(frozen=True)
class _Skipped:
    """A plugin that did not load: broken (it raised), or disabled by an environment variable."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    status: str  # BROKEN or DISABLED
    reason: str


@dataclass
class _State:
    """Everything one load produces; swapped in whole so readers never see half a load."""

    plugins: list[_Plugin] = field(default_factory=list)
    skipped: list[_Skipped] = field(default_factory=list)
    registries: dict[str, dict[str, Registration]] = field(default_factory=dict)
    errors: list[RetroPlatformError] = field(default_factory=list)


_lock = threading.RLock()
_state: _State | None = None
_loading_thread: int | None = None


# --- loading ---------------------------------------------------------------------------------


def load_plugins() -> None:
    """Load every plugin and build the registries, once per process (later calls return at once).

    Safe to call from several threads: one loads, the others wait for it. Problems are
    recorded in :func:`load_errors` and printed once on stderr; nothing here raises because
    of a plugin.
    """
    global _state, _loading_thread
    if _state is not None:
        return
    with _lock:
        if _state is not None:
            return
        if _loading_thread == threading.get_ident():
            # A plugin asked for a registry while being imported: it would see half a load.
            raise RuntimeError("a plugin looked up a registry while plugins were loading")
        _loading_thread = threading.get_ident()
        try:
            _unregister_all()  # whatever an interrupted load may have left behind
            state = _State()
            own_version = _own_version()
            for module in DEFAULT_PLUGINS:
                _load_plugin(
                    state, module, name=module, distribution=DISTRIBUTION, version=own_version
                )
            for ep, dist, version in _selected_entry_points(state):
                _load_plugin(state, ep.value, name=ep.name, distribution=dist, version=version)
            for family in FAMILIES:
                state.registries[family] = _build_registry(state, family)
            _check_deny_list(state)  # after the registries: it knows the built-ins' names
            _state = state
        finally:
            _loading_thread = None
    for error in state.errors:
        print(f"Warning: {error}", file=sys.stderr)


def reset_plugins() -> None:
    """Forget every loaded plugin so that the next look-up loads from scratch (for tests).

    Modules stay imported (Python caches them); their hooks are registered and called again.
    """
    global _state
    with _lock:
        _unregister_all()
        _state = None


def _unregister_all() -> None:
    for plugin in list(pm.get_plugins()):
        pm.unregister(plugin)


def _load_plugin(state: _State, path: str, *, name: str, distribution: str, version: str) -> None:
    """Import the plugin at ``path`` (``module`` or ``module:attribute``) and register it.

    The one code path for built-in and third-party plugins alike.
    """

    def skip(reason: str) -> None:
        state.errors.append(PluginLoadError(name, distribution, reason))
        state.skipped.append(_Skipped(name, path, distribution, version, BROKEN, reason))

    taken = next((p for p in state.plugins if p.name == name), None)
    if taken is not None:
        skip(f"is skipped: the plugin name is already used by {taken.distribution}")
        return
    try:
        module_name, _, attribute = path.partition(":")
        obj: object = importlib.import_module(module_name.strip())
        for part in filter(None, attribute.strip().split(".")):
            obj = getattr(obj, part)
        pm.register(obj, name=name)
    except (Exception, SystemExit) as exc:  # an import may raise anything; the rest must load
        skip(f"failed to load: {_one_line(exc)}")
        return
    plugin = _Plugin(name, path, distribution, version, obj)
    state.plugins.append(plugin)
    callers = pm.get_hookcallers(obj) or []
    for caller in callers:
        if not caller.has_spec():
            hint = did_you_mean(caller.name, hookspecs.hook_names())
            reason = f"implements unknown hook {caller.name!r}{hint}, which is ignored"
            state.errors.append(PluginLoadError(name, distribution, reason))
    implemented = {caller.name for caller in callers}
    for hook in hookspecs.hook_names():
        # pluggy ignores a function that is not marked: without this the plugin loads, registers
        # nothing, and an experiment that names it is only told the name is unknown
        if hook not in implemented and callable(getattr(obj, hook, None)):
            reason = (
                f"defines {hook} without the @hookimpl decorator (from retro_platform import "
                "hookimpl), so it is ignored"
            )
            state.errors.append(PluginLoadError(name, distribution, reason))


def _selected_entry_points(
    state: _State,
) -> Iterator[tuple[importlib.metadata.EntryPoint, str, str]]:
    """Third-party entry points that the allow-list lets through, sorted for a stable order.

    Names in the allow-list that match no installed plugin are reported: a typo there would
    otherwise silently disable a plugin.
    """
    allowed = _name_list(LOAD_PLUGINS_ENV)
    denied = _name_list(DISABLE_PLUGINS_ENV) or set()
    try:
        found = installed_entry_points()
    except Exception as exc:  # corrupt installed metadata must not take the built-ins down
        reason = f"could not be listed: {_one_line(exc)}"
        hint = "check the installed packages with: pip check"
        state.errors.append(PluginLoadError("third-party plugins", None, reason, hint=hint))
        found = []
    known = {normalize(DISTRIBUTION)}
    for ep, dist, version in found:
        names = {normalize(ep.name), normalize(dist)}
        known |= names
        if names & denied:
            reason = f"is disabled by {DISABLE_PLUGINS_ENV}"
        elif allowed is not None and not names & allowed:
            reason = f"is disabled: {LOAD_PLUGINS_ENV} does not name it"
        else:
            yield ep, dist, version
            continue
        state.skipped.append(_Skipped(ep.name, ep.value, dist, version, DISABLED, reason))
    for missing in sorted((allowed or set()) - known):
        hint = "check the spelling, or pip install it"
        suggestion = did_you_mean(missing, known - {normalize(DISTRIBUTION)})
        reason = f"is named in {LOAD_PLUGINS_ENV} but is not installed{suggestion}"
        state.errors.append(PluginLoadError(missing, None, reason, hint=hint))


def installed_entry_points() -> list[tuple[importlib.metadata.EntryPoint, str, str]]:
    """Every third-party plugin's entry point with its distribution's name and version, sorted
    by distribution, without importing any of them (``install`` and ``uninstall`` rely on that:
    they must work while a plugin is broken)."""
    found = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "unknown"
        found.append((ep, dist, version))
    return sorted(found, key=lambda item: (normalize(item[1]), item[0].name))


def _check_deny_list(state: _State) -> None:
    """Report names in ``RETRO_PLATFORM_DISABLE_PLUGINS`` that disabled nothing: a typo there
    would leave the plugin it meant running."""
    denied = os.environ.get(DISABLE_PLUGINS_ENV, "").split(",")
    matched = {normalize(s.name) for s in state.skipped} | {
        normalize(s.distribution) for s in state.skipped if s.distribution
    }
    # a built-in is known by its module, by the distribution, or by a name it registers
    # (``rotary``, ``faiss-flat``): the names a user sees
    builtins = {normalize(module) for module in DEFAULT_PLUGINS} | {normalize(DISTRIBUTION)}
    builtins |= {
        normalize(registered)
        for plugin in state.plugins
        if plugin.distribution == DISTRIBUTION
        for names in plugin.registered.values()
        for registered in names
    }
    third_party = {p.name for p in state.plugins if p.distribution != DISTRIBUTION}
    third_party |= {p.distribution for p in state.plugins if p.distribution != DISTRIBUTION}
    for name in sorted({item.strip() for item in denied if item.strip()}):
        if normalize(name) in matched:
            continue
        if normalize(name) in builtins:
            reason = f"is named in {DISABLE_PLUGINS_ENV}, but built-in plugins always load"
            hint = "pick another plugin in the experiment file instead"
        else:
            suggestion = did_you_mean(name, sorted(third_party))
            reason = f"is named in {DISABLE_PLUGINS_ENV} but is not installed{suggestion}"
            hint = "check the spelling against: retro-platform plugins"
        state.errors.append(PluginLoadError(name, None, reason, hint=hint))


def _name_list(variable: str) -> set[str] | None:
    """The normalized names in a comma-separated environment variable, or None when unset."""
    value = os.environ.get(variable)
    if value is None:
        return None
    return {normalize(item) for item in value.split(",") if item.strip()}


# --- registries ------------------------------------------------------------------------------


def _build_registry(state: _State, family: str) -> dict[str, Registration]:
    """Call ``register_<family>`` on each plugin in load order; the first to claim a name wins.

    Each plugin's hook is called on its own so that we know who registered what, and so that
    a hook that raises loses only that plugin's names for this family.
    """
    hook_name = f"register_{family}"
    noun = FAMILIES[family]
    registry: dict[str, Registration] = {}
    for plugin in state.plugins:
        if not any(caller.name == hook_name for caller in pm.get_hookcallers(plugin.obj) or []):
            continue
        pending: list[Registration] = []
        register = _register_callback(noun, plugin, pending)
        others = [p.obj for p in state.plugins if p is not plugin]
        try:
            pm.subset_hook_caller(hook_name, remove_plugins=others)(register=register)
        except (Exception, SystemExit) as exc:
            reason = f"failed in {hook_name}: {_one_line(exc)}"
            state.errors.append(PluginLoadError(plugin.name, plugin.distribution, reason))
            plugin.problem = plugin.problem or reason
            continue
        names = plugin.registered.setdefault(family, [])
        for registration in pending:
            first = registry.get(registration.name)
            if first is None:
                registry[registration.name] = registration
                names.append(registration.name)
            else:
                state.errors.append(_conflict(noun, first, registration))
    return dict(sorted(registry.items()))


def _register_callback(
    noun: str, plugin: _Plugin, pending: list[Registration]
) -> Callable[[str, Callable[..., Any]], None]:
    """The ``register(name, factory)`` a plugin's hook receives; it collects into ``pending``.

    Bad arguments raise, so the plugin's author sees them at once (as this plugin's load error).
    """

    def register(name: str, factory: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"invalid {noun} name {name!r}: use lowercase letters, digits, '-' and '_'"
            )
        if not callable(factory):
            raise TypeError(f"the factory of {noun} {name!r} is not callable: {factory!r}")
        pending.append(
            Registration(name, factory, plugin.name, plugin.distribution, plugin.version)
        )

    return register


def _conflict(noun: str, first: Registration, second: Registration) -> PluginConflictError:
    """The one-line report of a name registered twice, naming both plugins."""
    if first.plugin == second.plugin:
        return PluginConflictError(
            f"plugin {second.plugin!r} ({second.distribution}) registers {noun} "
            f"{second.name!r} twice; the first registration is used"
        )
    message = (
        f"{noun} {second.name!r} is registered by both plugin {first.plugin!r} "
        f"({first.distribution}) and plugin {second.plugin!r} ({second.distribution}); "
        f"using {first.plugin!r}; {_disable_hint(second.distribution, repr(second.plugin))}"
    )
    if normalize(first.distribution) != normalize(DISTRIBUTION):
        # two third-party plugins: the one used won by the order of distribution names, so say
        # how to get the other one (disabling the unused one only silences this line)
        message += (
            f"; to use {second.plugin!r} instead, set {DISABLE_PLUGINS_ENV}={first.distribution}"
        )
    return PluginConflictError(message)


# --- public look-ups -------------------------------------------------------------------------


def get_registry(family: str) -> dict[str, Registration]:
    """Every name registered in ``family`` (e.g. ``"positional_encodings"``), sorted by name.

    Returns a copy: changing it does not change what other callers see.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown plugin family {family!r}{did_you_mean(family, FAMILIES)}")
    load_plugins()
    assert _state is not None
    return dict(_state.registries[family])


def get_registration(family: str, name: str) -> Registration:
    """The registration of ``name`` in ``family``, or a one-line :class:`UnknownPluginError`."""
    registry = get_registry(family)
    if name in registry:
        return registry[name]
    noun = FAMILIES[family]
    assert _state is not None
    missing = _unavailable(_state, family, str(name))
    if missing is not None:
        raise UnknownPluginError(f"{noun} {name!r} is not available: {missing}")
    installed = ", ".join(registry) or "none"
    message = f"unknown {noun} {name!r}{did_you_mean(str(name), registry)}; installed: {installed}"
    # disabled plugins were disabled on purpose: only broken ones are worth the reminder
    broken = [s.name for s in _state.skipped if s.status == BROKEN]
    broken += [p.name for p in _state.plugins if p.problem]
    if broken:
        message += f"; broken plugins: {', '.join(broken)} (see: retro-platform plugins)"
    raise UnknownPluginError(message)


def _unavailable(state: _State, family: str, name: str) -> str | None:
    """Why a plugin that would provide ``name`` did not load, or None when none fits.

    A plugin that never loaded registered nothing, so which names it provides is unknown: a
    plugin fits when its entry-point name or its distribution name (``retro-platform-``
    prefix removed) is ``name``, as with ``scann`` from ``retro-platform-scann``.
    """
    for plugin in state.skipped:
        if _fits(name, plugin.name, plugin.distribution):
            source = (
                f" (from {plugin.distribution} {plugin.version})" if plugin.distribution else ""
            )
            if plugin.status == DISABLED:
                return f"plugin {plugin.name!r}{source} {plugin.reason}"
            return (
                f"plugin {plugin.name!r}{source} {plugin.reason}; fix it or remove it with: "
                f"retro-platform uninstall {plugin.distribution}"
            )
    for plugin in state.plugins:
        hook_failed = plugin.problem is not None and f"register_{family}" in plugin.problem
        if hook_failed and _fits(name, plugin.name, plugin.distribution):
            return f"plugin {plugin.name!r} (from {plugin.distribution}) {plugin.problem}"
    return None


def _fits(name: str, plugin: str, distribution: str | None) -> bool:
    """Whether ``name`` is the plugin's entry-point name or its distribution's, with or
    without the ``retro-platform-`` prefix."""
    names = {normalize(plugin), normalize(distribution or "")}
    return normalize(name) in names | {n.removeprefix("retro-platform-") for n in names}


def get_positional_encoding(name: str) -> Registration:
    """The positional encoding registered as ``name`` (its ``factory`` builds one)."""
    return get_registration("positional_encodings", name)


def plugin_options(
    family: str,
    table: Mapping[str, Any],
    *,
    table_name: str | None = None,
    base_dir: Path | None = None,
) -> tuple[Registration, Any]:
    """Look up ``table["name"]`` in ``family`` and validate the table's other keys.

    ``table`` is an experiment-file plugin table (``name`` plus options). Returns the
    registration and an instance of the plugin's ``Options`` model; relative paths resolve
    from ``base_dir``. Raises a one-line :class:`ConfigError` naming the table and key.
    """
    where = f"[{table_name or family}]"
    name = table.get("name")
    if not isinstance(name, str):
        installed = ", ".join(get_registry(family)) or "none"
        raise ConfigError(f'{where} needs name = "...": one of {installed}')
    registration = get_registration(family, name)
    options_model = getattr(registration.factory, "Options", None)
    if not (isinstance(options_model, type) and issubclass(options_model, PluginOptions)):
        # a plain pydantic model would silently ignore a misspelled option; anything else
        # has no model_validate: either way the plugin breaks the protocol, not the user
        found = "none" if options_model is None else repr(options_model)
        raise ConfigError(
            f"{where} name: {FAMILIES[family]} {name!r} cannot be used: its factory's Options "
            f"must be a subclass of retro_platform.protocols.PluginOptions, not {found}; "
            f"{_broken_plugin_hint(registration, family)}"
        )
    values = {key: value for key, value in table.items() if key != "name"}
    try:
        options = options_model.model_validate(values, context={BASE_DIR: base_dir})
    except ValidationError as error:
        raise ConfigError(
            _options_error(error, where, f"{FAMILIES[family]} {name!r}", options_model)
        ) from None
    try:
        recorded = options_dict(options)  # what the store and MLflow record: it must be JSON
    except (ValueError, TypeError) as error:  # pydantic's PydanticSerializationError included
        raise ConfigError(
            f"{where}: the options of {FAMILIES[family]} {name!r} cannot be recorded as JSON "
            f"({_one_line(error)}); {_broken_plugin_hint(registration, family)}"
        ) from None
    for key, value in recorded.items():
        # JSON has no NaN or infinity: SQLite stores them anyway, PostgreSQL refuses the row
        # ("cannot use the store database"), so one experiment would work on one store only
        try:
            json.dumps(value, allow_nan=False)
        except ValueError:
            where_from = (
                f"; it is the plugin's default: {_broken_plugin_hint(registration, family)}"
                if key not in values
                else ""
            )
            raise ConfigError(
                f"{where} {key}: {value!r} holds NaN or infinity, which the store cannot record "
                f"(options are stored as JSON); use a finite number for {FAMILIES[family]} "
                f"{name!r}{where_from}"
            ) from None
    return registration, options


def _broken_plugin_hint(registration: Registration, family: str) -> str:
    """What a user can do about a plugin that breaks the protocol: it is the plugin's bug."""
    if normalize(registration.distribution) == normalize(DISTRIBUTION):
        return "this is a bug in retro-platform, please report it"
    return (
        f"this is a bug in plugin {registration.plugin!r} ({registration.distribution} "
        f"{registration.version}): report it to its author, or pick another "
        f"{FAMILIES[family]} (see: retro-platform plugins)"
    )


def build_plugin(
    family: str,
    table: Mapping[str, Any],
    *args: Any,
    table_name: str | None = None,
    base_dir: Path | None = None,
) -> Any:
    """Validate ``table`` (see :func:`plugin_options`) and build the plugin:
    ``factory(options, *args)``."""
    registration, options = plugin_options(family, table, table_name=table_name, base_dir=base_dir)
    return registration.factory(options, *args)


def _options_error(error: ValidationError, where: str, what: str, model: type) -> str:
    """The first problem of a validation error as one line: which key, what is wrong."""
    problem = error.errors()[0]
    key = ".".join(str(part) for part in problem["loc"])
    known = list(model.model_fields)
    if problem["type"] == "extra_forbidden":
        choices = ", ".join(known) or "none"
        return (
            f"unknown option {key!r} in {where} for {what}{did_you_mean(key, known)}; "
            f"its options: {choices}"
        )
    if problem["type"] == "missing":  # its "input" is the whole table, not the key's value
        return f"{where} {key}: required, no default, for {what}: set {key} = ..."
    return f"{where} {key}: {problem['msg']} (got {problem.get('input')!r}) for {what}"


def load_errors() -> list[RetroPlatformError]:
    """Problems found while loading: :class:`PluginLoadError` and ``PluginConflictError``."""
    load_plugins()
    assert _state is not None
    return list(_state.errors)


def plugin_info() -> list[dict[str, Any]]:
    """One JSON-ready dict per plugin (what ``retro-platform plugins`` shows): the loaded ones in
    load order, then those that did not load.

    Keys: ``name``, ``module``, ``distribution``, ``version``, ``builtin``, ``hooks`` (the
    hooks it implements), ``registers`` (family -> the names that are now its), ``status``
    (``"loaded"``, ``"broken"`` or ``"disabled"``) and ``reason`` (why it is not loaded, or
    which hook failed; None when loaded).
    """
    load_plugins()
    assert _state is not None
    loaded = [
        {
            "name": plugin.name,
            "module": plugin.module,
            "distribution": plugin.distribution,
            "version": plugin.version,
            "builtin": plugin.module in DEFAULT_PLUGINS,
            "hooks": sorted(caller.name for caller in pm.get_hookcallers(plugin.obj) or []),
            "registers": {family: list(names) for family, names in plugin.registered.items()},
            "status": BROKEN if plugin.problem else LOADED,
            "reason": plugin.problem,
        }
        for plugin in _state.plugins
    ]
    skipped = [
        {
            "name": plugin.name,
            "module": plugin.module,
            "distribution": plugin.distribution,
            "version": plugin.version,
            "builtin": False,
            "hooks": [],
            "registers": {},
            "status": plugin.status,
            "reason": plugin.reason,
        }
        for plugin in _state.skipped
    ]
    return loaded + skipped


# --- helpers ---------------------------------------------------------------------------------


def plugin_in_traceback(error: BaseException) -> str | None:
    """One line naming the third-party plugin whose code raised ``error`` (the innermost frame
    of the traceback that is a loaded plugin's), or None when no plugin's code is in it.

    A plugin's bug is shown with its traceback, which names files, not plugins: this line says
    whose the file is and where to report it."""
    if _state is None:
        return None
    packages = {
        plugin.module.split(":")[0].split(".")[0]: plugin
        for plugin in _state.plugins
        if normalize(plugin.distribution) != normalize(DISTRIBUTION)
    }
    for frame, _ in reversed(list(traceback.walk_tb(error.__traceback__))):
        plugin = packages.get(str(frame.f_globals.get("__name__", "")).split(".")[0])
        if plugin is not None:
            return (
                f"the error above was raised in plugin {plugin.name!r} ({plugin.distribution} "
                f"{plugin.version}): if its options are right, report it to the plugin's author "
                f"({_one_line(error)}); {_disable_hint(plugin.distribution)}"
            )
    return None


def _disable_hint(distribution: str | None, what: str = "it") -> str:
    """How to stop a plugin from loading (built-ins cannot be: their failure is our bug)."""
    if distribution is None:
        return f"to skip {what}, set {LOAD_PLUGINS_ENV} to the plugins you want"
    if normalize(distribution) == normalize(DISTRIBUTION):
        return "this is a bug in retro-platform, please report it"
    return (
        f"to disable {what}, set {DISABLE_PLUGINS_ENV}={distribution} "
        f"or run: retro-platform uninstall {distribution}"
    )


def _one_line(exc: BaseException) -> str:
    """``ExcType: message`` with the message squeezed onto one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def normalize(name: str) -> str:
    """Distribution-name normalization (PEP 503), also applied to plugin names."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _own_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


__all__ = [
    "DEFAULT_PLUGINS",
    "DISABLE_PLUGINS_ENV",
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "LOAD_PLUGINS_ENV",
    "PluginLoadError",
    "Registration",
    "build_plugin",
    "get_positional_encoding",
    "get_registration",
    "get_registry",
    "normalize",
    "installed_entry_points",
    "load_errors",
    "load_plugins",
    "plugin_info",
    "plugin_options",
    "pm",
    "reset_plugins",
]
