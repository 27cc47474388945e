"""Fixtures of the pipeline tests: a real corpus and an experiment on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retro_platform.plugins import reset_plugins
from tests.pipeline.helpers import write_experiment, write_stdlib_corpus


@pytest.fixture(autouse=True)
def fresh_plugins():
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    return write_stdlib_corpus(tmp_path / "corpus")


@pytest.fixture
def experiment_file(tmp_path: Path, corpus_dir: Path, database_url: str) -> Callable[..., Path]:
    """``make(**tables)``: the test's experiment file on this test's database backend."""

    def make(**tables: dict[str, Any]) -> Path:
        return write_experiment(tmp_path, corpus_dir, database_url, **tables)

    return make
