"""Where an experiment's runs are tracked: the MLflow tracking URI, checked before any work.

The URI is ``[mlflow] tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite database
``mlflow.db`` beside the experiment file. MLflow's file store (a plain folder or ``file:``) is
refused: MLflow deprecated it and refuses it by default. So is the retrieval store's own
database: both keep an ``alembic_version`` table, and MLflow would migrate ours.

Nothing here imports mlflow, so resolving and checking a URI is instant.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from sqlalchemy.engine import make_url

from retro_platform.errors import ConfigError

if TYPE_CHECKING:
    from retro_platform.config import Experiment

#: The environment variable MLflow itself reads.
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: The embedded default's file name, beside the experiment file.
DEFAULT_DATABASE = "mlflow.db"
#: Database backends MLflow can keep runs in (``sqlite``, ``postgresql+psycopg``, ...).
DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})
HTTP_SCHEMES = frozenset({"http", "https"})
#: What an MLflow 3 UI page's query needs to show the runs table, not the GenAI overview.
RUNS_PAGE_QUERY = "workflowType=machine_learning"

_MASK = "***"


def experiment_name(experiment: Experiment) -> str:
    """The MLflow experiment of ``experiment``: ``[mlflow] experiment``, else its name."""
    return experiment.mlflow.experiment or experiment.experiment.name


def tracking_uri(experiment: Experiment) -> str:
    """The experiment's tracking URI, a relative SQLite path made absolute.

    Raises :class:`ConfigError` for a file store or for the retrieval store's own database.
    """
    if experiment.mlflow.tracking_uri:
        uri = _absolute_sqlite(experiment.mlflow.tracking_uri, _base_dir(experiment))
        source = "[mlflow] tracking_uri"
    elif os.environ.get(TRACKING_URI_ENV):
        uri = _absolute_sqlite(os.environ[TRACKING_URI_ENV], Path.cwd())
        source = TRACKING_URI_ENV
    else:
        uri = f"sqlite:///{_base_dir(experiment) / DEFAULT_DATABASE}"
        source = "the default tracking URI"
    _refuse_file_store(uri, source)
    _refuse_store_database(uri, source, experiment)
    return uri


def scheme(uri: str) -> str:
    """The URI's scheme without its driver, lower-case: ``postgresql+psycopg://`` ->
    ``postgresql``; ``""`` for a plain path."""
    found = urlsplit(uri).scheme.lower()
    return "" if len(found) == 1 else found.split("+", 1)[0]  # one letter: a Windows drive


def is_database_uri(uri: str) -> bool:
    """A database MLflow reads directly (SQLite, PostgreSQL, ...), not a tracking server."""
    return scheme(uri) in DATABASE_SCHEMES


def safe_uri(uri: str) -> str:
    """``uri`` with its password replaced by ``***``: the only form of a URI we print."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{parts.username or ''}:{_MASK}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI; None for other URIs and in-memory databases."""
    if scheme(uri) != "sqlite":
        return None
    database = make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(unquote(database)).expanduser()


def runs_page_url(ui_url: str, experiment_id: str | None) -> str:
    """The MLflow UI's page of an experiment's runs table, or its start page without one.

    MLflow 3 opens an experiment on its GenAI overview unless the page asks for the classic
    runs table with ``workflowType=machine_learning`` (its UI routes inside the ``#``).
    """
    base = ui_url.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{RUNS_PAGE_QUERY}"
    return f"{base}/#/experiments/{experiment_id}?{RUNS_PAGE_QUERY}"


def check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast, with one line, where MLflow would retry for minutes.

    A tracking server (http/https) must answer its ``/health`` endpoint within ``timeout_s``;
    a SQLite database's folder is created if missing. Other URIs are left to MLflow.
    """
    kind = scheme(uri)
    if kind in HTTP_SCHEMES:
        _check_server(uri, timeout_s)
    elif kind == "sqlite":
        path = sqlite_path(uri)
        if path is None:
            raise ConfigError(
                f"tracking URI {safe_uri(uri)} is an in-memory SQLite database, which keeps no "
                "runs: use a file, e.g. sqlite:///mlflow.db"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"cannot create the folder {path.parent} of the tracking database: "
                f"{error.strerror}; set [mlflow] tracking_uri to a writable place"
            ) from None


# ---------------------------------------------------------------- resolving


def _base_dir(experiment: Experiment) -> Path:
    return Path(experiment.base_dir).resolve()


def _absolute_sqlite(uri: str, base: Path) -> str:
    """A ``sqlite:`` URI with a relative path taken from ``base``; other URIs unchanged."""
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    url = make_url(uri).set(database=str((base / path).resolve()))
    return url.render_as_string(hide_password=False)


def _refuse_file_store(uri: str, source: str) -> None:
    if scheme(uri) in ("", "file"):
        raise ConfigError(
            f"{source} {uri!r} is an MLflow file store, which MLflow has deprecated: use a "
            'database, e.g. tracking_uri = "sqlite:///mlflow.db" in [mlflow] (beside the '
            "experiment file), or a tracking server's http(s):// URL"
        )


def _refuse_store_database(uri: str, source: str, experiment: Experiment) -> None:
    store_url = experiment.store.database_url
    if not _same_database(uri, store_url, _base_dir(experiment)):
        return
    raise ConfigError(
        f"{source} {safe_uri(uri)} is the retrieval store's own database: give MLflow a "
        'database of its own, e.g. tracking_uri = "sqlite:///mlflow.db" in [mlflow]'
    )


def _same_database(uri: str, store_url: str, base: Path) -> bool:
    if scheme(uri) != scheme(store_url) or not is_database_uri(uri):
        return False
    if scheme(uri) == "sqlite":
        tracking, store = sqlite_path(uri), sqlite_path(store_url)
        if tracking is None or store is None:
            return False
        # SQLAlchemy takes a relative store path from the working directory; the experiment
        # file's folder is the other plausible reading: refuse when either one matches
        candidates = {store} if store.is_absolute() else {Path.cwd() / store, base / store}
        return any(_same_file(tracking, candidate) for candidate in candidates)
    a, b = make_url(uri), make_url(store_url)
    return (a.host or "", a.port, a.database) == (b.host or "", b.port, b.database)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


# ---------------------------------------------------------------- servers


def _check_server(uri: str, timeout_s: float) -> None:
    parts = urlsplit(uri)
    # credentials travel in a header, never in the URL that errors might echo
    host = parts.netloc.rsplit("@", 1)[-1]
    health = urlunsplit(parts._replace(netloc=host, path=parts.path.rstrip("/") + "/health"))
    request = urllib.request.Request(health, method="GET")
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    fix = (
        "start the server, or set [mlflow] tracking_uri (or MLFLOW_TRACKING_URI) to one that "
        "runs, or unset both to track in sqlite:///mlflow.db beside the experiment file"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return  # it answers; credentials are MLflow's business
        problem = f"answered HTTP {error.code} at /health (is it an MLflow tracking server?)"
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        problem = f"is unreachable ({_reason(reason, timeout_s)})"
    except (OSError, ValueError) as error:
        problem = f"is unreachable ({type(error).__name__})"
    raise ConfigError(f"tracking server {safe_uri(uri)} {problem}: {fix}")


def _reason(reason: object, timeout_s: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__
