"""The resolved configuration a run logs: every default filled in, stable, MLflow-ready."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retro_platform.config import load_experiment
from retro_platform.config.experiment import PLUGIN_TABLES, TABLES, table_model
from retro_platform.config.resolved import (
    MAX_VALUE_CHARS,
    flatten_config,
    format_value,
    resolved_config,
)


def test_every_default_is_filled_in(write_file: Callable[..., Path], tmp_path: Path) -> None:
    resolved = resolved_config(load_experiment(write_file()))
    assert list(resolved) == [table for table in TABLES if table != "sweep"]
    for table in resolved:
        model = table_model(table)
        if model is not None:
            assert set(resolved[table]) == set(model.model_fields), table
    # plugin tables: name plus every option of the plugin, defaults included
    assert resolved["retriever"] == {"name": "faiss-flat", "metric": "ip"}
    assert resolved["embedder"]["dimension"] == 64 and "ngram" in resolved["embedder"]
    assert resolved["corpus"]["path"] == str(tmp_path)  # paths: absolute strings
    assert resolved["train"]["output"] == str(tmp_path / "runs")
    assert resolved["store"]["url"] == f"sqlite:///{tmp_path / 'store' / 'retro.db'}"
    # the positional encoding's own defaults
    assert resolved["model"]["positional_encoding_options"] == {
        "rotary_dim": None,
        "theta": 10000.0,
    }
    json.dumps(resolved)  # JSON-ready: what the run logs as config/resolved.json


def test_the_user_s_options_win_over_the_encoding_s_defaults(
    write_file: Callable[..., Path],
) -> None:
    experiment = load_experiment(write_file(), ["model.positional_encoding_options.theta=500.0"])
    options = resolved_config(experiment)["model"]["positional_encoding_options"]
    assert options == {"rotary_dim": None, "theta": 500.0}


def test_passwords_are_masked(write_file: Callable[..., Path]) -> None:
    experiment = load_experiment(
        write_file(),
        [
            "store.url=postgresql+psycopg://me:s3cret@db.example/retro",
            "mlflow.tracking_uri=https://me:s3cret@mlflow.example",
        ],
    )
    flat = flatten_config(resolved_config(experiment))
    assert flat["store.url"] == "postgresql+psycopg://me:***@db.example/retro"
    assert "s3cret" not in json.dumps(flat)


def test_the_sweep_is_not_part_of_it(write_file: Callable[..., Path]) -> None:
    experiment = load_experiment(write_file("[sweep]\ntrain.lr = [0.1, 0.2]\n"))
    assert "sweep" not in resolved_config(experiment)
    assert not any(key.startswith("sweep") for key in flatten_config(resolved_config(experiment)))


def test_the_same_file_gives_the_same_parameters(write_file: Callable[..., Path]) -> None:
    path = write_file()
    first = flatten_config(resolved_config(load_experiment(path)))
    second = flatten_config(resolved_config(load_experiment(path)))
    assert first == second and list(first) == list(second)
    # the same value written another way is the same parameter
    spelled = flatten_config(
        resolved_config(load_experiment(path, ["train.lr=0.001", "train.grad_clip=1"]))
    )
    assert spelled == first
    assert first["train.lr"] == "0.001" and first["train.grad_clip"] == "1"
    assert all(isinstance(value, str) for value in first.values())
    assert first["train.betas"] == "[0.9, 0.95]"
    assert first["model.enc_cross_attn_layers"] == "null"
    assert first["train.neighbours"] == "retrieved"
    assert first["generate.prompts"] == "[]"
    assert first["retriever.name"] == "faiss-flat"


def test_flattening() -> None:
    nested = {"a": {"b": 1, "c": {"d": [1.0, "x"]}, "e": {}}, "f": None}
    assert flatten_config(nested) == {"a.b": "1", "a.c.d": '[1, "x"]', "a.e": "{}", "f": "null"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.001, "0.001"),
        (1e-3, "0.001"),
        (1e-05, "1e-05"),
        (0.00001, "1e-05"),
        (3e-4, "0.0003"),
        (1.0, "1"),
        (1, "1"),
        (300, "300"),
        (0.1 + 0.2, "0.3"),
        (1e20, "1e+20"),
        (float("inf"), "Infinity"),
        (True, "true"),
        (None, "null"),
        ("faiss-flat", "faiss-flat"),
        ([0.9, 0.95], "[0.9, 0.95]"),
        ((1, 2), "[1, 2]"),
        ({"b": 1e-05, "a": "x"}, '{"a": "x", "b": 1e-05}'),
        (Path("/x/y"), '"/x/y"'),
    ],
)
def test_values_print_one_way(value: Any, text: str) -> None:
    assert format_value(value) == text


def test_long_values_are_cut_to_mlflow_s_limit_and_stay_distinct() -> None:
    one = format_value(["x" * 100] * 100)
    other = format_value(["x" * 100] * 99 + ["y" * 100])
    assert len(one) == len(other) == MAX_VALUE_CHARS
    assert one != other and "sha256:" in one
    assert len(format_value("z" * MAX_VALUE_CHARS)) == MAX_VALUE_CHARS  # at the limit: as is


def test_every_plugin_table_is_resolved_through_its_plugin(
    write_file: Callable[..., Path],
) -> None:
    experiment = load_experiment(write_file())
    resolved = resolved_config(experiment)
    for table in PLUGIN_TABLES:
        plugin = experiment.plugin_table(table)
        assert resolved[table] == {"name": plugin.name, **plugin.options}
