"""Params within MLflow's limits, and the tags that say what a run is made of."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import retro_platform
from retro_platform.config import load_experiment
from retro_platform.errors import ConfigError
from retro_platform.tracking.params import (
    MAX_PARAM_VALUE,
    TRUNCATED,
    batches,
    mlflow_params,
    tags_for,
)
from retro_platform.tracking.run import TrackedRun


def test_batches_of_at_most_100_in_order() -> None:
    items = {f"k{i:03d}": str(i) for i in range(250)}
    sizes = [len(batch) for batch in batches(items)]
    assert sizes == [100, 100, 50]
    merged: dict[str, str] = {}
    for batch in batches(items):
        merged.update(batch)
    assert list(merged.items()) == list(items.items())
    assert list(batches({})) == []


def test_long_values_are_cut_with_a_marker() -> None:
    params = mlflow_params({"short": "x", "long": "y" * 7000, "edge": "z" * MAX_PARAM_VALUE})
    assert params["short"] == "x"
    assert len(params["long"]) == MAX_PARAM_VALUE and params["long"].endswith(TRUNCATED)
    assert params["edge"] == "z" * MAX_PARAM_VALUE  # at the limit: kept whole


def test_keys_mlflow_refuses_are_made_acceptable() -> None:
    params = mlflow_params({"model.positional_encoding_options.a@b": "1", "train.lr": "0.001"})
    assert list(params) == ["model.positional_encoding_options.a_b", "train.lr"]
    with pytest.raises(ConfigError, match="rename one"):
        mlflow_params({"x.a@b": "1", "x.a#b": "2"})


def test_more_than_a_batch_of_long_params_reach_the_run(
    client: Any, mlflow_experiment: str
) -> None:
    flat = {f"section.key_{i:03d}": f"value {i}" for i in range(230)}
    flat["section.long"] = "w" * 9000
    run = TrackedRun.start(client, mlflow_experiment)
    run.log_params(flat)
    stored = client.get_run(run.run_id).data.params
    assert len(stored) == 231
    assert stored["section.key_229"] == "value 229"
    assert stored["section.long"] == "w" * (MAX_PARAM_VALUE - len(TRUNCATED)) + TRUNCATED
    run.finish()


# ---------------------------------------------------------------- tags


def test_tags_say_what_the_run_is_made_of(
    experiment_file: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    third_party_plugins: None,
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no git above
    experiment = load_experiment(
        experiment_file(
            retriever={"name": "faiss-hnsw"},
            model={"positional_encoding": "sinusoidal"},
        )
    )
    tags = tags_for(experiment, store_id=7)
    own_version = importlib.metadata.version("retro-platform")
    assert tags == {
        "retro.retriever": "faiss-hnsw",
        "retro.embedder": "hashing",
        "retro.tokenizer": "bytes",
        "retro.positional_encoding": "sinusoidal",
        "retro.corpus": "text-files",
        "retro.version": retro_platform.__version__,
        "retro.store_id": "7",
        # which distribution provided each plugin, at which version
        **{
            f"retro.{table}.{key}": value
            for table in ("corpus", "tokenizer", "embedder", "retriever")
            for key, value in (("distribution", "retro-platform"), ("version", own_version))
        },
        "retro.positional_encoding.distribution": "retro-platform-sinusoidal",
        "retro.positional_encoding.version": "0.1.0",
    }
    assert "retro.store_id" not in tags_for(experiment)


def test_git_commit_when_the_file_is_in_a_work_tree(
    experiment_file: Callable[..., Path], tmp_path: Path
) -> None:
    # a minimal work tree written by hand: HEAD naming a branch that names a commit
    commit = "0123456789abcdef0123456789abcdef01234567"
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "objects").mkdir()
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(commit + "\n")
    experiment = load_experiment(experiment_file(tmp_path / "repo" / "experiments"))
    tags: dict[str, Any] = tags_for(experiment)
    assert tags["retro.git_commit"] == commit
    assert tags["mlflow.source.git.commit"] == commit
