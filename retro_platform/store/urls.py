"""Database URLs: parsing them, keeping their passwords out of sight, one-line database errors.

Passwords are never shown: every URL we print or log goes through :func:`safe_url` (values
that may hold URLs through :func:`hide_passwords`, whole files through
:func:`hide_passwords_in_text`), and every database error raised inside
:func:`database_errors` (cannot connect, authentication failed, database locked, ...) is
re-raised as a one-line :class:`~retro_platform.errors.StoreError` with the password scrubbed
from the driver's text (:func:`scrub`). An ``IntegrityError`` (a
unique or foreign-key violation) is passed through unchanged, so that callers can react to it.

This module stays light: of SQLAlchemy it imports only ``URL``, ``make_url`` and the exceptions,
never Alembic or the ORM, so that ``config/resolved.py`` can mask a URL without loading them.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from retro_platform.errors import StoreError

#: The commands that serve a store this process may not write, as its errors list them.
READING_COMMANDS = "search, store stats, store check, store prune --dry-run and generate"

_MASK = "***"
#: ``//user:password@`` anywhere in a text: the password is group 2.
_USER_PASSWORD = re.compile(r"(//[^/:@\s\"']*:)([^/@\s\"']+)@")


# ---------------------------------------------------------------- passwords out of sight


def safe_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***``: the only form of a URL we print or log."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        # not parseable: hide whatever sits between "user:" and "@"
        return re.sub(r"(//[^/:@]*:)[^@]*@", rf"\g<1>{_MASK}@", str(url))


def has_password(value: str | URL) -> bool:
    """Whether ``value`` is a URL with a password (one that :func:`safe_url` changes)."""
    return bool(_secrets(value))


def hide_passwords(value: Any) -> Any:
    """``value`` with every URL in it shown as :func:`safe_url` shows it: a string, or lists
    and tables of them (a swept ``store.url``); anything else is returned as it is."""
    if isinstance(value, str):
        return safe_url(value) if has_password(value) else value
    if isinstance(value, dict):
        return {key: hide_passwords(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(hide_passwords(inner) for inner in value)
    return value


def hide_passwords_in_text(text: str) -> str:
    """``text`` with the password of every ``//user:password@`` in it masked, lines kept: for
    whole files, where a URL may also sit in a comment."""
    return _USER_PASSWORD.sub(rf"\g<1>{_MASK}@", text)


def _secrets(url: str | URL) -> list[str]:
    """Every spelling of the password of ``url`` that could turn up in a message."""
    found: set[str] = set()
    try:
        password = make_url(url).password
    except (sa_exc.ArgumentError, ValueError, TypeError):
        password = None
    if password:
        found |= {str(password), quote(str(password), safe=""), quote_plus(str(password))}
    raw = re.search(r"//[^/:@]*:([^@]*)@", str(url))
    if raw and raw.group(1):
        found.add(raw.group(1))
    return sorted(found, key=len, reverse=True)


def scrub(text: str, url: str | URL) -> str:
    """``text`` on one line, with the URL masked and every spelling of its password removed."""
    text = str(text)
    raw = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    if raw:
        text = text.replace(raw, safe_url(url))
    for secret in _secrets(url):
        text = text.replace(secret, _MASK)
    return " ".join(text.split())


def _describe(error: BaseException, url: str | URL) -> str:
    """The driver's own words for ``error`` (not SQLAlchemy's wrapper), scrubbed, shortened."""
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        text = str(error.orig) or type(error.orig).__name__
    else:
        text = str(error) or type(error).__name__
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", text)
    text = scrub(text, url)
    return text if len(text) <= 400 else text[:397] + "..."


@contextmanager
def database_errors(url: str | URL, doing: str) -> Iterator[None]:
    """Re-raise any database error inside the block as a one-line, password-free StoreError.

    ``doing`` completes "cannot ... <url>" (e.g. ``"open the store database"``).
    ``IntegrityError`` passes through unchanged: it is the caller's to handle.
    """
    try:
        yield
    except sa_exc.IntegrityError:
        raise
    except (sa_exc.SQLAlchemyError, sqlite3.Error) as error:
        message = f"cannot {doing} {safe_url(url)}: {_describe(error, url)}"
        if "readonly database" in message:  # SQLite's words; the store is on a read-only disk
            message += f" (the store is read-only here: {READING_COMMANDS} can read it)"
        if "no password supplied" in message:  # libpq's words when neither URL nor env has one
            message += (
                " (put it in the environment: PGPASSWORD, or a password file named by PGPASSFILE)"
            )
        raise StoreError(message) from None


# ---------------------------------------------------------------- parsing


def _parse(url: str | URL) -> URL:
    try:
        return make_url(url)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        # not echoed: an unparseable URL could hide its password anywhere
        raise StoreError(
            "the store's database URL is not a SQLAlchemy URL (expected e.g. "
            "sqlite:///store/retro.db or postgresql+psycopg://user:password@host:5432/database)"
        ) from None


def _sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL, or None for an in-memory or URI-style database."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or url.query.get("uri"):
        return None
    return Path(database)
