"""Fingerprints: what identifies a stored result, so a stage can tell it has nothing to do.

A fingerprint is the SHA-256 of a canonical JSON rendering of everything that determines a
result's content (plugin names, their full options with defaults, the fingerprint of the input,
the corpus version). Equal fingerprints mean equal results; any change makes a new one, and the
new result is built beside the old.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint(**parts: Any) -> str:
    """Hex SHA-256 of ``parts`` rendered as sorted, compact JSON."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short(value: str) -> str:
    """The first 16 hex digits: enough to name a file uniquely in one store."""
    return value[:16]
