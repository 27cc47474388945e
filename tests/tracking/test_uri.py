"""Where runs are tracked: the URI's sources in order, the refusals, and a quick reachability
check that fails in one line instead of MLflow's minutes of retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from retro_platform.config import load_experiment
from retro_platform.errors import ConfigError
from retro_platform.tracking.uri import (
    check_reachable,
    experiment_name,
    runs_page_url,
    safe_uri,
    sqlite_path,
    tracking_uri,
)
from tests.tracking.helpers import free_port

MakeFile = Callable[..., Path]


def uri_of(path: Path) -> str:
    return tracking_uri(load_experiment(path))


def test_default_is_mlflow_db_beside_the_experiment_file(
    experiment_file: MakeFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path.parent)  # not the experiment file's folder
    path = experiment_file(tmp_path / "exp")
    assert uri_of(path) == f"sqlite:///{(tmp_path / 'exp' / 'mlflow.db').resolve()}"


def test_environment_variable_comes_second(
    experiment_file: MakeFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert uri_of(experiment_file()) == "http://tracking.example:5000"
    in_file = experiment_file(mlflow={"tracking_uri": "sqlite:////srv/runs/mlflow.db"})
    assert uri_of(in_file) == "sqlite:////srv/runs/mlflow.db"


def test_relative_sqlite_path_is_relative_to_its_source(
    experiment_file: MakeFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = experiment_file(tmp_path / "exp", mlflow={"tracking_uri": "sqlite:///db/runs.db"})
    assert sqlite_path(uri_of(path)) == (tmp_path / "exp" / "db" / "runs.db").resolve()
    # the environment variable is MLflow's own: relative to the working directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert sqlite_path(uri_of(experiment_file(tmp_path / "exp"))) == (elsewhere / "env.db")


@pytest.mark.parametrize("uri", ["mlruns", "/srv/mlruns", "file:///srv/mlruns", "./runs"])
def test_file_store_is_refused(experiment_file: MakeFile, uri: str) -> None:
    with pytest.raises(ConfigError, match="file store.*sqlite:///mlflow.db") as error:
        uri_of(experiment_file(mlflow={"tracking_uri": uri}))
    assert "\n" not in str(error.value)
    assert "[mlflow] tracking_uri" in str(error.value)


def test_file_store_from_the_environment_is_refused(
    experiment_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI .* file store"):
        uri_of(experiment_file())


@pytest.mark.parametrize(
    "spelling",
    [
        "sqlite:///store/retro.db",  # relative to the experiment file
        "sqlite:///store/../store/retro.db",
        "{folder}/store/retro.db",  # absolute
    ],
)
def test_the_retrieval_stores_database_is_refused(
    experiment_file: MakeFile, tmp_path: Path, spelling: str
) -> None:
    uri = spelling.format(folder=f"sqlite:///{tmp_path}")
    path = experiment_file(mlflow={"tracking_uri": uri})
    assert load_experiment(path).store.database_url == f"sqlite:///{tmp_path / 'store/retro.db'}"
    with pytest.raises(ConfigError, match="retrieval store's own database"):
        uri_of(path)


def test_the_default_is_refused_when_the_store_took_its_file(
    experiment_file: MakeFile, tmp_path: Path
) -> None:
    path = experiment_file(store={"path": "store", "url": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    with pytest.raises(ConfigError, match="default tracking URI .* own database"):
        uri_of(path)


def test_the_same_postgresql_database_is_refused(experiment_file: MakeFile) -> None:
    store = "postgresql+psycopg://me:secret@db.example:5432/retro"
    path = experiment_file(
        store={"path": "store", "url": store},
        mlflow={"tracking_uri": "postgresql://me:secret@db.example:5432/retro"},
    )
    with pytest.raises(ConfigError, match="own database") as error:
        uri_of(path)
    assert "secret" not in str(error.value)
    other = experiment_file(
        store={"path": "store", "url": store},
        mlflow={"tracking_uri": "postgresql://me:secret@db.example:5432/mlflow"},
    )
    assert uri_of(other).endswith("/mlflow")


def test_experiment_name_defaults_to_the_experiments(experiment_file: MakeFile) -> None:
    assert experiment_name(load_experiment(experiment_file())) == "pipeline-test"
    named = experiment_file(mlflow={"experiment": "compare"})
    assert experiment_name(load_experiment(named)) == "compare"


def test_safe_uri_masks_the_password() -> None:
    assert safe_uri("https://me:p%40ss@mlflow.example/x") == "https://me:***@mlflow.example/x"
    assert safe_uri("http://mlflow.example:5000") == "http://mlflow.example:5000"
    assert safe_uri("sqlite:////srv/mlflow.db") == "sqlite:////srv/mlflow.db"


# ---------------------------------------------------------------- reachability


def test_unreachable_server_is_one_quick_line_without_the_password() -> None:
    uri = f"http://me:hunter2@127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        check_reachable(uri, timeout_s=2.0)
    assert time.monotonic() - started < 3.0
    message = str(error.value)
    assert "\n" not in message and "hunter2" not in message
    assert f"http://me:***@127.0.0.1:{uri.rsplit(':', 1)[1]} is unreachable" in message
    assert "start the server" in message


class _Server:
    """A real local HTTP server answering ``/health`` with ``status``; records the requests."""

    def __init__(self, status: int) -> None:
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (the http.server API)
                owner.requests.append((self.path, self.headers.get("Authorization")))
                self.send_response(status if self.path.endswith("/health") else 404)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Callable[[int], _Server]]:
    started: list[_Server] = []

    def start(status: int) -> _Server:
        started.append(_Server(status))
        return started[-1]

    yield start
    for each in started:
        each.close()


def test_a_server_answering_health_passes(server: Callable[[int], _Server]) -> None:
    healthy = server(200)
    check_reachable(f"http://me:pw@127.0.0.1:{healthy.port}/prefix/", timeout_s=2.0)
    [(path, authorization)] = healthy.requests
    assert path == "/prefix/health"
    assert authorization == "Basic bWU6cHc="  # me:pw, sent as a header, not in the URL


def test_a_server_without_health_is_not_mlflow(server: Callable[[int], _Server]) -> None:
    other = server(404)
    with pytest.raises(ConfigError, match="HTTP 404 .* MLflow tracking server"):
        check_reachable(f"http://127.0.0.1:{other.port}", timeout_s=2.0)


def test_sqlite_folder_is_created(tmp_path: Path) -> None:
    check_reachable(f"sqlite:///{tmp_path / 'new' / 'folder' / 'mlflow.db'}")
    assert (tmp_path / "new" / "folder").is_dir()
    with pytest.raises(ConfigError, match="in-memory"):
        check_reachable("sqlite://")


def test_unwritable_sqlite_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot create the folder .* writable"):
        check_reachable(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")


def test_the_runs_page_asks_mlflow_3_for_the_runs_table() -> None:
    assert runs_page_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    )
    # no experiment yet: the list of experiments, still in the runs view
    assert runs_page_url("http://127.0.0.1:5000", None) == (
        "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    )
