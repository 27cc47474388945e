"""Tiny experiment files for the runner's tests: a real corpus, a real store, a real MLflow
SQLite tracking store, a model small enough that a run takes seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from tests.pipeline.helpers import write_stdlib_corpus
from tests.training.helpers import experiment_file


def tiny_experiment(folder: Path, **overrides: dict[str, Any]) -> Path:
    """An experiment file in ``folder`` (corpus, store and MLflow database beside it)."""
    corpus = folder / "corpus"
    if not corpus.exists():
        write_stdlib_corpus(corpus)
    base: dict[str, dict[str, Any]] = {
        "experiment": {"name": "runner-test", "seed": 3},
        "generate": {"samples": 1, "prompt_tokens": 16, "max_tokens": 20},
    }
    for table, values in overrides.items():
        base[table] = {**base.get(table, {}), **values}
    return experiment_file(folder, corpus, folder / "store", **base)


def client_for(path: Path) -> MlflowClient:
    """A client on the default tracking store of the experiment file ``path``."""
    return MlflowClient(tracking_uri=f"sqlite:///{path.parent / 'mlflow.db'}")


def runs_of(path: Path, experiment: str = "runner-test") -> list[Any]:
    client = client_for(path)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def artifact_paths(client: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    """Every artifact file of a run (recursively), as paths relative to its root."""
    found = set()
    for item in client.list_artifacts(run_id, folder):
        if item.is_dir:
            found |= artifact_paths(client, run_id, item.path)
        else:
            found.add(item.path)
    return found
