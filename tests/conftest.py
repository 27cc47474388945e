"""Shared test set-up: a hermetic environment, and opt-in third-party plugins.

Third-party plugins (entry points) are skipped in this project's own tests, so whatever a
developer has installed cannot change a result: ``RETRO_PLATFORM_LOAD_PLUGINS`` is set to the
empty allow-list (built-ins always load). Subprocesses inherit it. A test that wants entry
points asks for the ``third_party_plugins`` fixture; ``plugin_dist`` builds a real throwaway
distribution that declares one.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis's per-example deadline is a timed assertion: on shared cores a first call that
# imports or compiles something takes seconds. No test may fail for being slow.
settings.register_profile("retro-platform", deadline=None)
settings.load_profile("retro-platform")

os.environ["RETRO_PLATFORM_LOAD_PLUGINS"] = ""
# Nothing may reach for the network: the Hugging Face hub and MLflow's telemetry would hang.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
# as the command line does (retro_platform/cli/__init__.py), before anything loads torch:
# OpenMP threads that spin made training steps 5 times slower on shared cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session", autouse=True)
def nothing_written_where_pytest_runs() -> Iterator[None]:
    """Tests write under their temporary folders. MLflow's default artifact root, a relative
    ``./mlruns``, once sent a test's artifacts into the clone the suite ran in."""
    here = Path.cwd()
    before = {path.name for path in here.iterdir()}
    yield
    # pytest's and hypothesis's caches; setuptools builds in the source tree when a test
    # installs or packages the project from it (build/, *.egg-info)
    expected = {".pytest_cache", ".hypothesis", "build", "retro_platform.egg-info"}
    added = sorted({path.name for path in here.iterdir()} - before - expected)
    assert not added, f"the tests wrote {added} into {here}, where pytest runs"


@pytest.fixture
def third_party_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Load third-party plugins as a user's install would (no allow-list), fresh for this test."""
    from retro_platform.plugins import reset_plugins

    monkeypatch.delenv("RETRO_PLATFORM_LOAD_PLUGINS")
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """``make(dist, source, entry_point=None)``: install a one-module plugin dist for this test.

    A real ``*.dist-info`` (METADATA + entry_points.txt) on ``sys.path``, found by
    ``importlib.metadata`` exactly as a pip-installed one. The module is named after the
    distribution (``-`` -> ``_``), and so is the entry point unless ``entry_point`` is given.
    Also available to subprocesses through ``PYTHONPATH``.
    """
    modules: list[str] = []

    def make(dist: str, source: str, entry_point: str | None = None) -> Path:
        module = dist.replace("-", "_")
        entry_point = entry_point or module
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[retro_platform]\n{entry_point} = {module}\n")
        modules.append(module)
        importlib.invalidate_caches()
        return tmp_path

    monkeypatch.syspath_prepend(str(tmp_path))
    pythonpath = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(pythonpath))
    yield make
    for module in modules:
        sys.modules.pop(module, None)


# ---- the store's databases: a real PostgreSQL server (tests/postgres.py) and SQLite --------
from tests.postgres import postgres_server, postgres_url  # noqa: E402, F401  (fixtures)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store database: a SQLite file, then a PostgreSQL database.

    The PostgreSQL server starts on first use; without one the ``postgresql`` case is skipped
    (fails in CI). ``-m "not postgres"`` leaves it out.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'retro.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def indexed(tmp_path_factory: pytest.TempPathFactory):
    """One real store (six stdlib modules, hashing embeddings, exact Faiss), shared by the
    evaluation and generation tests."""
    from tests.evaluation.helpers import build_store

    return build_store(tmp_path_factory.mktemp("evaluation"))


@pytest.fixture(scope="session")
def trained(indexed):
    """A tiny RETRO trained on the training documents only, long enough to beat chance."""
    from tests.evaluation.helpers import document_batches, tiny_retro, train

    batches = document_batches(indexed, indexed.training_documents(), batch_size=8)
    return train(tiny_retro(indexed), batches, steps=60)
