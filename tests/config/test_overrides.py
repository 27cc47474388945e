"""``--set KEY=VALUE``: how values are read and which setting wins."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from retro_platform.config import load_experiment
from retro_platform.config.overrides import parse_override, parse_value
from retro_platform.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100", 100),
        ("1e-3", 0.001),
        ("-2.5", -2.5),
        ("true", True),
        ("false", False),
        ("[1, 2]", [1, 2]),
        ('["a", "b"]', ["a", "b"]),
        ('"x"', "x"),
        ("'quoted # not a comment'", "quoted # not a comment"),
        ("{steps = 5}", {"steps": 5}),
        ("faiss-hnsw", "faiss-hnsw"),  # not TOML: a plain string
        ("sqlite:///runs/mlflow.db", "sqlite:///runs/mlflow.db"),
        ("two words", "two words"),
        ("2024-01-31", "2024-01-31"),  # a TOML date, but no key takes one
        ("1\nsteps = 2", "1\nsteps = 2"),  # a second key smuggled in stays text
        ("", ""),
    ],
)
def test_values_are_toml_else_plain_strings(text: str, value: Any) -> None:
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train.steps=100", ("train", "steps")),
        (" train.steps = 100 ", ("train", "steps")),
        (
            "model.positional_encoding_options.slope=0.5",
            ("model", "positional_encoding_options", "slope"),
        ),
        ('sweep."train.lr"=[1e-3]', ("sweep", "train.lr")),
        ("mlflow.tracking_uri=sqlite:///a=b.db", ("mlflow", "tracking_uri")),
    ],
)
def test_keys_are_dotted_toml_keys(text: str, key: tuple[str, ...]) -> None:
    assert parse_override(text).key == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.steps", "expected KEY=VALUE"),
        ("=3", "'' is not a dotted key"),
        ("train..steps=3", "'train..steps' is not a dotted key"),
        ("train. steps x=3", "is not a dotted key"),
    ],
)
def test_malformed_overrides_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_override(text)
    assert str(caught.value).startswith(f"--set {text!r}: ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_override_beats_the_file_and_the_last_one_wins(
    write_file: Callable[..., Path],
) -> None:
    path = write_file()
    assert load_experiment(path).train.steps == 10
    assert load_experiment(path, ["train.steps=100"]).train.steps == 100
    assert load_experiment(path, ["train.steps=100", "train.steps=7"]).train.steps == 7
    experiment = load_experiment(
        path,
        [
            "train.lr=1e-4",
            "retriever.name=faiss-hnsw",
            "retriever.efSearch=16",
            "model.positional_encoding_options.theta=500.0",
            "generate.prompts=['def ', 'class ']",
            "mlflow.tracking_uri=sqlite:///tracking.db",
        ],
    )
    assert experiment.train.lr == 1e-4
    assert experiment.train.seq_len == 128  # the rest of the table is the file's
    assert experiment.retriever == {"name": "faiss-hnsw", "efSearch": 16}
    assert experiment.plugin_table("retriever").options["efSearch"] == 16
    assert experiment.model.positional_encoding_options == {"theta": 500.0}
    assert experiment.generate.prompts == ("def ", "class ")
    assert experiment.mlflow.tracking_uri == "sqlite:///tracking.db"


def test_a_table_value_replaces_the_table(write_file: Callable[..., Path]) -> None:
    experiment = load_experiment(write_file(), ["train={steps = 5}"])
    assert experiment.train.steps == 5 and experiment.train.seq_len == 256  # the default


def test_relative_paths_set_on_the_command_line_are_from_the_file(
    write_file: Callable[..., Path], tmp_path: Path
) -> None:
    experiment = load_experiment(write_file(), ["train.output=elsewhere", "store.path=s"])
    assert experiment.train.output == tmp_path / "elsewhere"
    assert experiment.store.path == tmp_path / "s"


def test_overrides_reach_into_a_sweep_however_the_file_wrote_it(
    write_file: Callable[..., Path],
) -> None:
    nested = write_file('[sweep]\ntrain.lr = [0.1, 0.2]\nretriever.name = ["faiss-flat"]\n')
    experiment = load_experiment(nested, ["sweep.train.lr=[0.3]", 'sweep."train.steps"=[1, 2]'])
    assert experiment.sweep.grid == {
        "train.lr": [0.3],
        "retriever.name": ["faiss-flat"],
        "train.steps": [1, 2],
    }
    quoted = write_file('[sweep]\n"train.lr" = [0.1, 0.2]\n')
    assert load_experiment(quoted, ["sweep.train.lr=[0.5]"]).sweep.grid == {"train.lr": [0.5]}
    assert load_experiment(quoted, ["sweep={}"]).sweep.grid == {}


def test_the_cli_applies_overrides(
    write_file: Callable[..., Path], invoke: Callable[..., Result]
) -> None:
    path = write_file()
    result = invoke("validate", path, "--set", "train.steps=1234", "--set", "train.batch_size=3")
    assert result.exit_code == 0, result.output
    assert "1234 steps of 3 x 128 tokens" in result.stdout
