"""The example experiment files stay valid, and the quickstart runs (on a few files)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from retro_platform.config import load_experiment
from retro_platform.config.experiment import experiment_from_dict
from retro_platform.corpus.chunk_table import is_validation
from retro_platform.generation import search
from retro_platform.pipeline import ingest, run_index
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


def _fraction_holding_out_one(path: Path, max_files: int) -> float:
    """The smallest validation fraction (in tenths) that holds out one of the first files the
    example's reader gives and keeps one for the database: the split is a hash of each file's
    id, so which few files a corpus yields (a package's version) decides it."""
    data = tomllib.loads(path.read_text())
    data["corpus"]["max_files"] = max_files
    experiment = experiment_from_dict(data, base_dir=path.parent, source=path)
    ids = [
        document.external_id for document in experiment.plugin_table("corpus").build().documents()
    ]
    for tenths in range(1, 10):
        held_out = sum(is_validation(external_id, tenths / 10) for external_id in ids)
        if 0 < held_out < len(ids):
            return tenths / 10
    raise AssertionError(f"no validation fraction splits {ids}")


@pytest.mark.slow
@pytest.mark.e2e  # 12-60 s each: out of the default suite's 15 minutes, run by CI after it
@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs_in_a_reduced_form(path: Path, tmp_path: Path) -> None:
    """Every example, every sweep point included, through ``retro-platform run`` with only
    sizes cut by ``--set``: five files, two steps, a tiny evaluation and sample."""
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from retro_platform.cli import cli

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    max_files = 5
    cuts = {
        "store.path": str(tmp_path / "store"),
        "train.output": str(tmp_path / "runs"),
        "mlflow.tracking_uri": tracking,
        "corpus.max_files": max_files,
        "retrieval.validation_fraction": _fraction_holding_out_one(path, max_files),
        "train.document_fraction": 1.0,  # of four files or so, a half could be none
        "tokenizer.vocab_size": 512,
        "embedder.workers": 1,
        "train.steps": 2,
        "train.batch_size": 2,
        "eval.sequences": 2,
        "generate.samples": 1,
        "generate.max_tokens": 4,
    }
    overrides = [part for key, value in cuts.items() for part in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(cli, ["run", str(path), *overrides, "--no-progress"])
    assert result.exit_code == 0, result.stderr or result.output

    experiment = load_experiment(path)
    points = 1
    for values in experiment.sweep.grid.values():
        points *= len(values)
    client = MlflowClient(tracking_uri=tracking)
    found = client.get_experiment_by_name(experiment.experiment.name)
    runs = client.search_runs([found.experiment_id])
    finished = [run for run in runs if "val/bpb" in run.data.metrics]
    assert len(finished) == points
    assert all(run.info.status == "FINISHED" for run in runs)
