"""An MLflow client for a checked tracking URI, and MLflow's errors as one line.

mlflow is imported here, on first use, never at the import of the package: it takes seconds,
and importing it sets up its telemetry (a client, and an installation id written under
``~/.config/mlflow``) unless :func:`quiet_mlflow_environment` has turned telemetry off first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from sqlalchemy.exc import SQLAlchemyError

from retro_platform.atomic import atomic_destination, stale_partials
from retro_platform.errors import RetroPlatformError
from retro_platform.tracking.uri import check_reachable, safe_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient


#: What to do about a tracking store that cannot be opened.
_OTHER_STORE = (
    "check that no other program holds it and that it is an MLflow database, or set "
    "[mlflow] tracking_uri to another store"
)


class TrackingError(RetroPlatformError):
    """The tracking store refused or failed a request (schema out of date, server error, ...)."""


def quiet_mlflow_environment() -> None:
    """Telemetry off unless the user turned it on: MLflow's aims at a host that may be
    unreachable. Creating a SQLite store logs every migration at INFO: keep that quiet. So are
    MLflow's progress bars for each artifact it moves (a few small files, read by ``runs``
    and written by ``run``), unless the user asked for them."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def open_client(uri: str, *, timeout_s: float = 3.0) -> MlflowClient:
    """A client of ``uri`` after :func:`~retro_platform.tracking.uri.check_reachable`."""
    check_reachable(uri, timeout_s)
    quiet_mlflow_environment()
    from mlflow import MlflowClient  # lazy: after quiet_mlflow_environment() (module docstring)

    # a database store is opened (and migrated) here: a damaged one fails now
    with tracking_errors(uri, "open the tracking store", then=_OTHER_STORE), _creating(uri):
        return MlflowClient(tracking_uri=uri)


@contextmanager
def _creating(uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` beside a SQLite tracking database exclusively while it is
    opened: MLflow creates and migrates a new database then, and several processes doing that
    at once (runs started together on a fresh ``mlflow.db``) break each other's migrations
    (alembic's "expected to match one row", SQLite's "duplicate column name"). A lock file
    of its own, never the database: closing another descriptor of the database would drop
    SQLite's own locks on it.

    A new database is created and migrated under a temporary name and renamed into place: a
    process killed during the seconds that takes leaves no half-migrated database, which every
    later open refuses ("table jobs already exists")."""
    database = _sqlite_file(uri)
    if database is None:
        yield
        return
    import fcntl

    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not database.exists():
                from mlflow import MlflowClient  # lazy: see the module docstring

                for stale in stale_partials(database):  # left by a process killed creating it
                    stale.with_name(stale.name + "-journal").unlink(missing_ok=True)
                    stale.unlink(missing_ok=True)
                with atomic_destination(database) as temporary:
                    MlflowClient(tracking_uri=f"sqlite:///{temporary}")  # creates and migrates
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI; None for anything else (or where ``flock``
    is missing)."""
    if not uri.startswith("sqlite:") or os.name != "posix":
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(uri).database
    except Exception:  # MLflow reports a malformed URI itself
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


@contextmanager
def tracking_errors(
    uri: str, doing: str = "use the tracking store", then: str | None = None
) -> Iterator[None]:
    """Re-raise an MLflow (or database) error inside the block as a one-line
    :class:`TrackingError` that names the URI without its password, ending with ``then``
    (what to do next) where given."""
    from mlflow.exceptions import MlflowException  # lazy: see the module docstring

    try:
        yield
    except (MlflowException, SQLAlchemyError) as error:
        # a database's own reason, without the SQL statement SQLAlchemy adds to it
        reason = getattr(error, "orig", None) if isinstance(error, SQLAlchemyError) else None
        message = str(reason or getattr(error, "message", None) or error) or type(error).__name__
        message = str(message).replace(uri, safe_uri(uri))
        password = urlsplit(uri).password
        if password:
            message = message.replace(password, "***").replace(quote(password, safe=""), "***")
        message = " ".join(message.split())
        if len(message) > 400:
            message = message[:397] + "..."
        advice = f"; {then}" if then else ""  # after the cut: the advice is never lost
        raise TrackingError(f"cannot {doing} {safe_uri(uri)}: {message}{advice}") from None
