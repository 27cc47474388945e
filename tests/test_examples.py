"""The example experiment files stay valid, and the quickstart runs (on a few files)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from retro_platform.config import load_experiment
from retro_platform.config.experiment import experiment_from_dict
from retro_platform.pipeline import ingest, run_index, search
from retro_platform.store.database import open_store

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    experiment = load_experiment(path)
    experiment.check_plugins()


@pytest.mark.slow
def test_quickstart_runs_end_to_end_on_a_few_files(tmp_path: Path) -> None:
    path = EXAMPLES[0].parent / "quickstart.toml"
    data = tomllib.loads(path.read_text())
    data["corpus"]["max_files"] = 3
    data["store"]["path"] = str(tmp_path / "store")
    experiment = experiment_from_dict(data, base_dir=path.parent, source=path)
    store = open_store(experiment.store.database_url, experiment.store.path)
    report = ingest(experiment, store, progress=False)
    assert report.added == 3 and report.chunks > 10
    result = run_index(experiment, store, progress=False, log=lambda _: None)
    assert result.embeddings.dimension == 384
    hits = search(experiment, store, "def main():", 2)
    assert len(hits) == 2 and all(hit.text for hit in hits)
