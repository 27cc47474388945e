"""The plugin hooks of retro-platform: every hook a plugin may implement, in one place.

A plugin is a module (or a distribution that names one under the entry-point group
``retro_platform``) with functions decorated by :data:`hookimpl`. Each ``register_*`` hook is
called once, when the plugin manager first loads, with a ``register`` callback::

    from retro_platform import hookimpl

    @hookimpl
    def register_positional_encodings(register):
        register("sinusoidal", SinusoidalEncoding)

``register(name, factory)`` records which plugin registered ``name``; a name registered twice is
refused with a message naming both plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "retro_platform"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[..., None]


@hookspec
def register_positional_encodings(register: Register) -> None:
    """Register positional-encoding variants for the RETRO model.

    Called once when plugins load. Call ``register(name, factory)`` for each variant, where
    ``factory`` is a subclass of :class:`retro_platform.protocols.PositionalEncoding` (or any
    callable taking the same keyword arguments and returning one). The model looks the name up
    in ``[model] positional_encoding`` / ``RETRO(positional_encoding=...)``.
    """


def hook_names() -> list[str]:
    """The names of every hook defined here (used by the docs test and ``plugins``)."""
    return sorted(name for name, obj in globals().items() if hasattr(obj, "retro_platform_spec"))


__all__: list[Any] = ["hookimpl", "hookspec", "register_positional_encodings", "hook_names"]
