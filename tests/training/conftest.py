"""Fixtures of the training tests: one real store (stdlib sources, byte tokens, hashing
embeddings, exact Faiss neighbours) shared by every test, and a ``setup`` per experiment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from retro_platform.plugins import reset_plugins
from tests.training.helpers import Setup, experiment_file, prepare, write_corpus


@pytest.fixture(autouse=True)
def fresh_plugins():
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """``[train] threads`` sets torch's thread count for the process: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """Ingested and indexed once for the whole session."""
    store = tmp_path_factory.mktemp("store")
    prepare(experiment_file(tmp_path_factory.mktemp("build"), corpus, store))
    return store


@pytest.fixture
def make_file(tmp_path: Path, corpus: Path, store_dir: Path) -> Callable[..., Path]:
    """``make(name="exp", **table_overrides)``: an experiment file on the shared store."""

    def make(name: str = "exp", **overrides: Any) -> Path:
        return experiment_file(tmp_path / name, corpus, store_dir, **overrides)

    return make


@pytest.fixture
def setup(make_file: Callable[..., Path]) -> Callable[..., Setup]:
    """``setup(**table_overrides)``: experiment, index, tokenizer and loaded sequences."""

    def make(name: str = "exp", **overrides: Any) -> Setup:
        return prepare(make_file(name, **overrides))

    return make
