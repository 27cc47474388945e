"""The copy-alignment benchmark still runs: a few copy-task steps and the same-place shares of
a tiny indexed store, through the script as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retro_platform.cli.common import open_experiment
from retro_platform.pipeline import ingest, run_index
from tests.limits import HANG_S
from tests.pipeline.helpers import write_experiment, write_stdlib_corpus

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.e2e
def test_copy_alignment_prints_both_tables(tmp_path: Path) -> None:
    corpus = write_stdlib_corpus(tmp_path / "corpus")
    path = write_experiment(
        tmp_path, corpus, retrieval={"chunk_size": 16, "neighbours": 2, "validation_fraction": 0.4}
    )
    experiment, store = open_experiment(str(path))
    ingest(experiment, store, progress=False)
    run_index(experiment, store, progress=False, log=lambda _: None)
    store.close()

    out = tmp_path / "figures.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "copy_alignment.py"), "--steps", "100"]
    command += ["--experiment", str(path), "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    assert "## Copy task" in done.stdout and "validation tokens at the same place" in done.stdout
    figures = json.loads(out.read_text())
    assert set(figures["curves"]) == {"on the chunk grid", "at a random offset"}
    for curve in figures["curves"].values():
        assert [step for step, _ in curve] == [100] and 0 < curve[0][1] < 2 * figures["chance"]
    assert set(figures["shares"]) == {"on the chunk grid", "lined up"}
    assert all(0 <= share <= 1 for share in figures["shares"].values())
