"""docs/plugins.md cannot drift: every hook has a heading, and its examples are run here."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from retro_platform import plugins
from retro_platform.hookspecs import hook_names

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TEXT = DOC.read_text()

RIVAL = """
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PositionalEncoding

@hookimpl
def register_positional_encodings(register):
    register("rotary", PositionalEncoding)
"""


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", TEXT, flags=re.S | re.M)


def headings() -> list[str]:
    """The first word of every heading, without backticks or a trailing ``(...)``."""
    return re.findall(r"^#+\s+`?([\w.-]+)", TEXT, flags=re.M)


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_heading(hook: str) -> None:
    assert hook in headings(), f"docs/plugins.md needs a heading for the hook {hook}"


def test_every_hook_heading_is_a_real_hook() -> None:
    documented = {heading for heading in headings() if heading.startswith("register_")}
    assert documented <= set(hook_names())


def test_the_loading_controls_and_the_command_are_documented() -> None:
    assert f"## Choosing which plugins load: `{plugins.LOAD_PLUGINS_ENV}`" in TEXT
    assert "## Listing plugins: `retro-platform plugins`" in TEXT
    assert "retro-platform plugins --json" in TEXT
    for method in ("embed", "rotate", "bias"):
        assert f"`{method}(" in TEXT


def test_the_example_plugin_loads_and_works(
    third_party_plugins: None, plugin_dist: Callable[..., Path]
) -> None:
    [source] = [block for block in code_blocks("python") if "@hookimpl" in block]
    plugin_dist("retro-platform-distance", source)
    registration = plugins.get_positional_encoding("distance-penalty")
    assert registration.distribution == "retro-platform-distance"
    encoding = registration.factory(
        role="decoder", dim=8, heads=2, dim_head=4, max_positions=16, causal=True, slope=0.5
    )
    bias = encoding.bias(torch.arange(4), torch.arange(4))
    assert bias.shape == (2, 4, 4)
    assert torch.equal(bias[1], -0.5 * (torch.arange(4)[:, None] - torch.arange(4)).abs())
    assert plugins.load_errors() == []


def test_the_json_example_is_what_the_command_prints(third_party_plugins: None) -> None:
    [example] = code_blocks("json")
    printed = next(info for info in plugins.plugin_info() if info["name"] == "sinusoidal")
    assert json.loads(example) == printed


def test_the_warning_examples_are_what_retro_platform_prints(
    third_party_plugins: None,
    plugin_dist: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plugin_dist("retro-platform-broken", "import faiss_gpu\n", entry_point="broken")
    plugin_dist("retro-platform-rival", RIVAL, entry_point="rival")
    plugins.load_plugins()
    printed = capsys.readouterr().err.splitlines()
    documented = [
        line
        for block in code_blocks("text")
        for line in block.splitlines()
        if line.startswith("Warning:")
    ]
    assert sorted(printed) == sorted(documented)


def test_cli_reference_matches_the_commands_help():
    from retro_platform.cli_reference import render

    written = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert written == render(), "regenerate: python -m retro_platform.cli_reference > docs/cli.md"


def test_every_experiment_file_key_is_documented() -> None:
    from retro_platform.config.experiment import (
        Experiment,
        ExperimentTable,
        RetrievalTable,
        StoreTable,
    )
    from retro_platform.config.runner_tables import (
        EvalTable,
        GenerateTable,
        MlflowTable,
        ModelTable,
        TrainTable,
    )

    text = (DOC.parent / "experiment-file.md").read_text()
    tables = [name for name in Experiment.model_fields if name not in ("source", "base_dir")]
    for table in tables:
        assert f"[{table}]" in text, f"docs/experiment-file.md does not mention [{table}]"
    for model, table in (
        (ExperimentTable, "experiment"),
        (StoreTable, "store"),
        (RetrievalTable, "retrieval"),
        (ModelTable, "model"),
        (TrainTable, "train"),
        (EvalTable, "eval"),
        (GenerateTable, "generate"),
        (MlflowTable, "mlflow"),
    ):
        section = text.split(f"## `[{table}]`", 1)[1].split("\n## ", 1)[0]
        for key in model.model_fields:
            assert f"| `{key}` |" in section, f"[{table}] {key} is not documented"
