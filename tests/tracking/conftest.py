"""Fixtures of the tracking tests: experiment files and a real MLflow SQLite tracking store;
``mlflow_server``, a real ``mlflow server`` (``tests/mlflow_server.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retro_platform.tracking.client import open_client
from tests.mlflow_server import mlflow_server  # noqa: F401  (a fixture)
from tests.pipeline.helpers import write_experiment


@pytest.fixture(autouse=True)
def no_tracking_uri_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell sets must not decide where a test tracks."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def experiment_file(tmp_path: Path) -> Callable[..., Path]:
    """``make(folder=tmp_path, **tables)``: a small experiment file, with a corpus of one
    document (``run`` checks that its corpus can be read before anything else)."""

    def make(folder: Path | None = None, **tables: dict[str, Any]) -> Path:
        folder = folder or tmp_path
        (folder / "corpus").mkdir(parents=True, exist_ok=True)
        (folder / "corpus" / "notes.txt").write_text("One document.\n")
        return write_experiment(folder, folder / "corpus", **tables)

    return make


@pytest.fixture(scope="module")
def module_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking store per test module (creating one runs MLflow's migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def client(module_uri: str) -> Any:
    return open_client(module_uri)


@pytest.fixture
def mlflow_experiment(request: pytest.FixtureRequest) -> str:
    """An MLflow experiment name of this test's own."""
    return f"test-{request.node.name}"
