"""docs/experiment-file.md documents the runner's tables and nothing they do not have
(tests/test_docs.py checks the other direction: every key is documented)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from retro_platform.config.experiment import table_model

DOC = (Path(__file__).resolve().parents[2] / "docs" / "experiment-file.md").read_text()


@pytest.mark.parametrize("table", ["model", "train", "eval", "generate", "mlflow"])
def test_documented_keys_exist(table: str) -> None:
    section = DOC.split(f"## `[{table}]`", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    model = table_model(table)
    assert model is not None
    assert documented == list(model.model_fields), "document the keys in the table's order"


def test_the_sweep_and_the_command_line_are_documented() -> None:
    for heading in (
        "## `[sweep]`",
        "## Changing a key on the command line: `--set`",
        "## Checking a file: `retro-platform validate`",
    ):
        assert heading in DOC
