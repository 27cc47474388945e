"""Errors a user can act on. The CLI prints their message as one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RetroPlatformError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""

    exit_code = 2


class ConfigError(RetroPlatformError):
    """An invalid argument or configuration value."""


class UnknownPluginError(ConfigError):
    """A plugin name that no installed plugin registered."""


class StoreError(RetroPlatformError):
    """The retrieval store cannot be used as it is (schema version, missing or corrupt files)."""


class IndexFileError(StoreError):
    """A vector-index file that is missing, unreadable or does not match its record."""


class DiskError(RetroPlatformError):
    """A file that could not be written: the disk is full, a file size limit or a quota was
    reached, or the file system is read-only (see :mod:`retro_platform.disk`)."""


class RunInUseError(RetroPlatformError):
    """A run folder that another process is training."""


class CorpusError(RetroPlatformError):
    """A corpus that yields nothing usable."""


class PluginConflictError(RetroPlatformError):
    """Two plugins registered the same name."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
