"""``retro-platform run``: one experiment file in, a trained, evaluated run in MLflow out;
resumed after a kill, skipped when finished, refused on bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.config import load_experiment
from retro_platform.config.resolved import flatten_config, resolved_config
from retro_platform.runner.folder import run_folder
from retro_platform.training.checkpoint import checkpoint_path, load_checkpoint
from tests.runner.helpers import artifact_paths, client_for, runs_of, tiny_experiment


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["run", *args, "--no-progress"])
    return result.exit_code, result.stdout, result.stderr


def folder_of(path: Path, *overrides: str) -> Path:
    experiment = load_experiment(path, overrides)
    return run_folder(experiment, flatten_config(resolved_config(experiment)))


def test_a_run_trains_evaluates_and_logs_everything_to_mlflow(tmp_path: Path) -> None:
    path = tiny_experiment(tmp_path)
    code, out, err = run_cli(str(path))
    assert code == 0, err

    (run,) = runs_of(path)
    assert run.info.status == "FINISHED"
    # named for the experiment (its folder keeps the hash), described by its result
    assert run.info.run_name == "runner-test"
    bpb, off = run.data.metrics["val/bpb"], run.data.metrics["val/bpb_retrieval_off"]
    assert run.data.tags["mlflow.note.content"] == (
        f"retrieval on: val bpb {bpb:.4f} ({(bpb - off) / off:+.1%} vs the same weights without "
        f"it: {off:.4f})"
    )
    params = run.data.params
    # the fully resolved config, defaults and plugin options included
    assert params["train.steps"] == "6" and params["model.dec_dim"] == "32"
    assert params["retriever.metric"] == "ip" and params["eval.retrieval_off"] == "true"
    assert params == flatten_config(resolved_config(load_experiment(path)))
    tags = run.data.tags
    assert tags["retro.retriever"] == "faiss-flat" and tags["retro.embedder"] == "hashing"
    assert tags["retro.positional_encoding"] == "rotary" and tags["retro.store_id"]
    client = client_for(path)
    for key in ("train/loss", "train/lr", "train/tokens_per_s", "train/loader_share"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [2, 4, 6], key
    for key in ("val/loss", "val/bpb", "val/bpb_retrieval_off", "val/loss_retrieval_off"):
        (metric,) = client.get_metric_history(run.info.run_id, key)
        assert metric.step == 6 and 0 < metric.value < 20, key
    assert artifact_paths(client, run.info.run_id) >= {
        "config/experiment.toml",
        "config/resolved.json",
        "checkpoint/checkpoint.pt",
        "leakage/leakage.csv",
        "leakage/leakage.png",
        "eval/chunks.npz",
        "samples.md",
    }
    samples = client.download_artifacts(run.info.run_id, "samples.md", str(tmp_path / "dl"))
    assert "| neighbour |" in Path(samples).read_text()  # the retrieved chunks, listed
    assert run.info.run_id in out and "val/bpb" in out
    # the closing output splits retrieval's gain by overlap: one line per leakage bucket
    _, _, split = out.partition("by how much a chunk overlaps the neighbours it was given\n")
    header, *rows, total, note, verdict = split.strip().splitlines()
    assert header.split("  ")[0] == "overlap" and "same weights without" in header
    assert [row.split()[0] + " " + row.split()[1] for row in rows] == [
        "[0, 0.125]", "(0.125, 0.25]", "(0.25, 0.5]", "(0.5, 0.75]", "(0.75, 1]",
    ]  # fmt: skip
    assert total.split() == [
        "all",
        "chunks",
        "100.0%",
        f"{bpb:.4f}",
        f"{off:.4f}",
        f"{off - bpb:.4f}",
        f"({(off - bpb) / off:.1%})",
    ]
    assert note.startswith("gain: bits per byte that retrieval saves")
    # and one line a newcomer reads: how much retrieval lowers the bpb of the same weights
    assert verdict.startswith("retrieval ") and verdict.endswith(f"({(bpb - off) / off:+.1%})")
    assert f"{bpb:.4f} with it, {off:.4f} with the same weights without it" in verdict


def test_a_finished_run_is_not_run_again(tmp_path: Path) -> None:
    path = tiny_experiment(tmp_path)
    assert run_cli(str(path))[0] == 0
    checkpoint = checkpoint_path(folder_of(path))
    stamp = checkpoint.stat().st_mtime_ns
    code, out, _ = run_cli(str(path))
    assert code == 0 and "finished earlier" in out
    assert checkpoint.stat().st_mtime_ns == stamp
    assert len(runs_of(path)) == 1
    # a changed key is another run, in its own folder
    assert run_cli(str(path), "--set", "train.steps=4")[0] == 0
    assert len(runs_of(path)) == 2


def test_a_killed_run_resumes_into_the_same_mlflow_run_with_the_same_weights(
    tmp_path: Path,
) -> None:
    steps = {"train": {"steps": 40, "checkpoint_every": 5, "log_every": 5}}
    killed = tiny_experiment(tmp_path / "killed", **steps)
    whole = tiny_experiment(tmp_path / "whole", **steps)
    command = [sys.executable, "-m", "retro_platform.cli", "run", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    process = subprocess.Popen(
        [*command, str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = checkpoint_path(folder_of(killed))
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first_step = load_checkpoint(checkpoint)["step"]
    assert 0 < first_step < 40, "the kill came too late to test a resume"
    (run,) = runs_of(killed)
    assert run.info.status == "RUNNING"  # a SIGKILL leaves no chance to say otherwise

    for path in (killed, whole):
        done = subprocess.run([*command, str(path)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    (resumed,) = runs_of(killed)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    final = load_checkpoint(checkpoint_path(folder_of(killed)))["model"]
    expected = load_checkpoint(checkpoint_path(folder_of(whole)))["model"]
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[name], expected[name]) for name in final)
    losses = client_for(killed).get_metric_history(run.info.run_id, "train/loss")
    steps = [m.step for m in losses]
    assert max(steps) == 40
    assert len(steps) == len(set(steps)), "steps repeated after the resume were logged twice"
    uninterrupted = client_for(whole).get_metric_history(
        runs_of(whole)[0].info.run_id, "train/loss"
    )
    assert sorted((m.step, m.value) for m in losses) == sorted(
        (m.step, m.value) for m in uninterrupted
    )


def start_run(path: Path) -> subprocess.Popen:
    """``retro-platform run PATH`` in a process of its own, output discarded."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, "-m", "retro_platform.cli", "run", "--no-progress", str(path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_run_being_trained_is_not_trained_twice(tmp_path: Path) -> None:
    """A second `run` of a configuration whose folder another process holds stops in one line
    (before it would train the same folder and MLflow run at once); once the holder is killed,
    the same command resumes and finishes the run."""
    path = tiny_experiment(tmp_path, train={"steps": 40, "checkpoint_every": 5})
    first = start_run(path)
    lock = folder_of(path) / "run.lock"
    try:
        deadline = time.monotonic() + 120
        while first.poll() is None and time.monotonic() < deadline:
            if lock.exists() and lock.read_text().startswith("pid"):
                break
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)  # holding the folder, for as long as the test likes
        code, _, err = run_cli(str(path))
        assert code == 2, err
        assert err.startswith(
            f"Error: run folder {folder_of(path)} is being trained by another process (pid "
            f"{first.pid} on "
        ), err
        assert err.count("\n") == 1
        assert not (folder_of(path) / "done.json").exists()
    finally:
        first.kill()
        first.wait()
    code, _, err = run_cli(str(path))  # the kernel let the killed holder's lock go
    assert code == 0, err
    [run] = runs_of(path)
    assert run.info.status == "FINISHED"


def test_a_training_run_keeps_store_prune_off_its_index(tmp_path: Path) -> None:
    """Its evaluation and samples open the index again after training: a prune meanwhile
    (after the corpus changed and was indexed again) would remove it from under the run."""
    path = tiny_experiment(tmp_path, train={"steps": 40, "checkpoint_every": 5})
    training = start_run(path)
    checkpoint = checkpoint_path(folder_of(path))
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and time.monotonic() < deadline:
            assert training.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.05)
        os.kill(training.pid, signal.SIGSTOP)  # training, after its retrieval stages
        pruned = CliRunner().invoke(cli, ["store", "prune", str(path), "--json"])
        assert pruned.exit_code == 0, pruned.output
        assert json.loads(pruned.stdout)["corpora_in_use"] == [1]
    finally:
        training.kill()
        training.wait()
    pruned = CliRunner().invoke(cli, ["store", "prune", str(path), "--json"])
    assert json.loads(pruned.stdout)["corpora_in_use"] == []  # the killed run's lock went


def test_a_sweep_is_a_parent_run_with_a_child_per_point(tmp_path: Path) -> None:
    path = tiny_experiment(
        tmp_path,
        sweep={
            "retriever.name": ["faiss-flat", "faiss-hnsw"],
            "train.neighbours": ["retrieved", "none"],
        },
    )
    code, out, err = run_cli(str(path))
    assert code == 0, err
    runs = runs_of(path)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents[0].info.run_id
    assert all(child.data.tags["mlflow.parentRunId"] == parent_id for child in children)
    points = {
        (c.data.params["retriever.name"], c.data.params["train.neighbours"]) for c in children
    }
    assert points == {
        ("faiss-flat", "retrieved"),
        ("faiss-flat", "none"),
        ("faiss-hnsw", "retrieved"),
        ("faiss-hnsw", "none"),
    }
    # each named by its swept keys' last part and values
    assert {child.info.run_name for child in children} == {
        f"name={retriever},neighbours={kind}" for retriever, kind in points
    }
    for child in children:  # a baseline has no retrieval-off figure of its own to report
        off = "val/bpb_retrieval_off" in child.data.metrics
        assert off == (child.data.params["train.neighbours"] == "retrieved")
    # the stages the points share were computed once: one corpus, one embedding set, an
    # index per retriever
    stats = CliRunner().invoke(cli, ["store", "stats", str(path), "--json"])
    figures = json.loads(stats.stdout)
    assert len(figures["corpora"]) == 1 and len(figures["embedding_sets"]) == 1
    assert len(figures["vector_indexes"]) == 2
    table = CliRunner().invoke(cli, ["runs", str(path)])
    assert table.exit_code == 0 and "retriever.name" in table.stdout
    # the grid varies train.neighbours: the parent compares the points by neighbour overlap
    compared = client_for(path).download_artifacts(
        parent_id, "comparison/comparison.csv", str(tmp_path / "dl")
    )
    header = Path(compared).read_text().splitlines()[0]
    for retriever in ("faiss-flat", "faiss-hnsw"):
        assert header.count(f"name={retriever},neighbours=retrieved [retrieval off]") == 1
    assert "| all chunks" in table.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--set", "mlflow.tracking_uri=http://127.0.0.1:9"], "127.0.0.1:9"),
        (["--set", "train.stpes=3"], "did you mean 'steps'"),
        (["--set", "corpus.path=does-not-exist"], "does-not-exist"),
        (["--set", "train.seq_len=50"], "multiple"),
    ],
    ids=["unreachable-tracking-server", "misspelt-key", "missing-corpus", "cross-field"],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, overrides, message) -> None:
    path = tiny_experiment(tmp_path)
    code, _, err = run_cli(str(path), *overrides)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("Error: ") and message in err
    assert not (tmp_path / "runs").exists()  # nothing was started
    assert not (tmp_path / "store").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_output_folder_that_is_a_file_is_one_line_before_any_stage(tmp_path: Path) -> None:
    path = tiny_experiment(tmp_path)
    (tmp_path / "taken").write_text("not a folder")
    code, _, err = run_cli(str(path), "--set", "train.output=taken")
    assert code == 2 and err.startswith("Error: ") and err.count("\n") == 1
    assert "[train] output" in err and "taken" in err
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_a_checkpoint_of_another_model_shape_is_refused(tmp_path: Path) -> None:
    path = tiny_experiment(tmp_path)
    assert run_cli(str(path), "--set", "model.dec_dim=48")[0] == 0
    other = checkpoint_path(folder_of(path, "model.dec_dim=48"))
    target = checkpoint_path(folder_of(path))
    target.parent.mkdir(parents=True)
    target.write_bytes(other.read_bytes())
    code, _, err = run_cli(str(path))
    # after the stages' progress lines (a log's), the refusal is one line
    *progress, error = err.splitlines()
    assert code == 2 and error.startswith("Error: ") and "dec_dim" in error
    assert all(line.startswith(("ingest: ", "embed: ", "neighbours: ")) for line in progress)
    assert target.read_bytes() == other.read_bytes()  # nothing stored was touched


def test_a_broken_plugin_does_not_stop_a_run_that_does_not_use_it(
    tmp_path: Path, plugin_dist, third_party_plugins: None
) -> None:
    plugin_dist("retro-platform-fancy", "import fancy_gpu_kernels\n", entry_point="fancy")
    path = tiny_experiment(tmp_path)
    code, out, err = run_cli(str(path))
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("Warning: plugin 'fancy'")]
    assert len(warnings) == 1 and "retro-platform uninstall retro-platform-fancy" in warnings[0]
    assert len(runs_of(path)) == 1

    # an experiment that names it is told why it is missing, before anything starts
    code, _, err = run_cli(str(path), "--set", "retriever.name=fancy")
    assert code == 2
    assert err.splitlines()[-1] == (
        "Error: [retriever] name: retriever 'fancy' is not available: plugin 'fancy' (from "
        "retro-platform-fancy 1.0) failed to load: ModuleNotFoundError: No module named "
        "'fancy_gpu_kernels'; fix it or remove it with: retro-platform uninstall "
        "retro-platform-fancy"
    )
