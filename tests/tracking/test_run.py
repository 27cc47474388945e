"""One MLflow run: started, resumed after a restart into the same run, nested, finished."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from retro_platform.errors import ConfigError
from retro_platform.tracking.run import (
    PARENT_TAG,
    RUN_ID_FILE,
    TrackedRun,
    get_or_create_experiment,
    load_run_id,
    save_run_id,
)
from retro_platform.tracking.uri import sqlite_path


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_a_new_run_is_running_with_its_tags(client: Any, mlflow_experiment: str) -> None:
    run = TrackedRun.start(client, mlflow_experiment, run_name="first", tags={"retro.x": "1"})
    stored = client.get_run(run.run_id)
    assert stored.info.status == "RUNNING"
    assert stored.info.run_name == "first"
    assert stored.data.tags["retro.x"] == "1"
    assert not run.resumed and run.notice is None
    experiment = client.get_experiment(run.experiment_id)
    assert experiment.name == mlflow_experiment
    run.finish()
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_artifacts_go_beside_the_sqlite_database(
    client: Any, mlflow_experiment: str, module_uri: str, tmp_path: Path
) -> None:
    run = TrackedRun.start(client, mlflow_experiment)
    (tmp_path / "experiment.toml").write_text("[experiment]\n")
    run.log_artifact(tmp_path / "experiment.toml")
    run.log_artifact(tmp_path / "experiment.toml", "config")
    run.log_text("resolved = true\n", "config/resolved.toml")
    run.finish()
    root = sqlite_path(module_uri).parent / "mlartifacts"
    artifacts = root / f"test-{test_artifacts_go_beside_the_sqlite_database.__name__}"
    assert (artifacts / run.run_id / "artifacts" / "experiment.toml").is_file()
    saved = artifacts / run.run_id / "artifacts" / "config"
    assert sorted(p.name for p in saved.iterdir()) == ["experiment.toml", "resolved.toml"]
    assert (saved / "resolved.toml").read_text() == "resolved = true\n"


def test_a_restarted_job_resumes_into_the_same_run(
    client: Any, mlflow_experiment: str, tmp_path: Path
) -> None:
    params = {"train.lr": "0.001", "train.steps": "100"}
    run = TrackedRun.start(client, mlflow_experiment, run_name="job")
    save_run_id(tmp_path / "run", run.run_id)
    run.log_params(params)
    run.log_metrics(1, {"train/loss": 3.0, "train/lr": 1e-4})
    run.log_metrics(2, {"train/loss": 2.5})
    run.finish("KILLED")  # the job was stopped

    saved = load_run_id(tmp_path / "run")
    assert saved == run.run_id
    again = TrackedRun.start(client, mlflow_experiment, run_name="job", run_id=saved)
    assert again.run_id == run.run_id and again.resumed and again.notice is None
    assert client.get_run(run.run_id).info.status == "RUNNING"
    again.log_params(params)  # the same config: nothing to log, no error
    # the restarted job repeats step 2 (its last checkpoint was step 1): train/loss was logged
    # there already and is not logged twice; train/lr, last logged at step 1, is
    again.log_metrics(2, {"train/loss": 2.5, "train/lr": 5e-5})
    again.log_metrics(3, {"train/loss": 2.0})
    again.finish()
    assert history(client, run.run_id, "train/loss") == [(1, 3.0), (2, 2.5), (3, 2.0)]
    assert history(client, run.run_id, "train/lr") == [(1, 1e-4), (2, 5e-5)]
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.data.params == params
    runs = client.search_runs([again.experiment_id])
    assert [r.info.run_id for r in runs] == [run.run_id]


def test_a_step_logged_again_in_one_process_is_logged_once(
    client: Any, mlflow_experiment: str
) -> None:
    # a run whose [eval] every divides its steps validates the last step twice: periodically,
    # then in the final evaluation; a resumed run logged it once, so must an uninterrupted one
    run = TrackedRun.start(client, mlflow_experiment)
    run.log_metrics(10, {"val/bpb": 3.5})
    run.log_metrics(10, {"val/bpb": 3.5, "val/loss": 2.0})
    run.finish()
    assert history(client, run.run_id, "val/bpb") == [(10, 3.5)]
    assert history(client, run.run_id, "val/loss") == [(10, 2.0)]


def test_a_changed_config_is_refused_on_resume(client: Any, mlflow_experiment: str) -> None:
    run = TrackedRun.start(client, mlflow_experiment)
    run.log_params({"train.lr": "0.001", "train.steps": "100"})
    run.finish("KILLED")
    again = TrackedRun.start(client, mlflow_experiment, run_id=run.run_id)
    with pytest.raises(ConfigError, match="'train.lr' is '0.01' .* logged '0.001'.*config changed"):
        again.log_params({"train.steps": "100", "train.lr": "0.01", "new.key": "1"})
    again.finish("FAILED")  # what a caller's error handler does: the run stays as it was
    stored = client.get_run(run.run_id)
    assert stored.info.status == "KILLED"  # left as it was, not marked failed
    assert stored.data.params == {"train.lr": "0.001", "train.steps": "100"}  # nothing logged


@pytest.mark.parametrize("how", ["deleted", "unknown", "other experiment"])
def test_a_run_that_cannot_be_resumed_starts_a_new_one(
    client: Any, mlflow_experiment: str, how: str
) -> None:
    old = TrackedRun.start(
        client, f"{mlflow_experiment}-other" if how == "other experiment" else mlflow_experiment
    )
    old.finish("KILLED")
    if how == "deleted":
        client.delete_run(old.run_id)
    run_id = "f" * 32 if how == "unknown" else old.run_id
    said: list[str] = []
    run = TrackedRun.start(client, mlflow_experiment, run_id=run_id, log=said.append)
    assert run.run_id != run_id and not run.resumed
    assert said == [run.notice]
    assert run_id in said[0] and "starting a new run" in said[0]
    assert client.get_run(run.run_id).info.status == "RUNNING"
    run.finish()


def test_sweep_children_are_nested_under_their_parent(client: Any, mlflow_experiment: str) -> None:
    parent = TrackedRun.start(client, mlflow_experiment, run_name="sweep")
    children = [
        TrackedRun.start(
            client, mlflow_experiment, run_name=f"point-{i}", parent_run_id=parent.run_id
        )
        for i in range(2)
    ]
    for child in children:
        child.finish()
    parent.finish()
    nested = client.search_runs(
        [parent.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}'"
    )
    assert {r.info.run_id for r in nested} == {child.run_id for child in children}
    # a resumed child keeps its parent
    again = TrackedRun.start(
        client, mlflow_experiment, run_id=children[0].run_id, parent_run_id=parent.run_id
    )
    assert client.get_run(again.run_id).data.tags[PARENT_TAG] == parent.run_id
    again.finish()


def test_the_context_manager_records_how_the_run_ended(client: Any, mlflow_experiment: str) -> None:
    with TrackedRun.start(client, mlflow_experiment) as ok:
        ok.log_metrics(0, {"val/bpb": 2.0})
    with pytest.raises(RuntimeError), TrackedRun.start(client, mlflow_experiment) as failed:
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), TrackedRun.start(client, mlflow_experiment) as killed:
        raise KeyboardInterrupt
    statuses = [client.get_run(r.run_id).info.status for r in (ok, failed, killed)]
    assert statuses == ["FINISHED", "FAILED", "KILLED"]
    ok.finish("FAILED")  # an ended run stays ended as it was
    assert client.get_run(ok.run_id).info.status == "FINISHED"


def test_get_or_create_experiment_is_idempotent_and_refuses_a_deleted_one(
    client: Any, mlflow_experiment: str
) -> None:
    first = get_or_create_experiment(client, mlflow_experiment)
    assert get_or_create_experiment(client, mlflow_experiment) == first
    client.delete_experiment(first)
    with pytest.raises(ConfigError, match=f"deleted: restore it .*--experiment-id {first}"):
        TrackedRun.start(client, mlflow_experiment)


# ---------------------------------------------------------------- the run folder


def test_run_id_file_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "a"
    assert load_run_id(folder) is None
    run_id = "0123456789abcdef0123456789abcdef"
    path = save_run_id(folder, run_id)
    assert path == folder / RUN_ID_FILE
    assert load_run_id(folder) == run_id
    save_run_id(folder, "f" * 32)  # replaced whole
    assert load_run_id(folder) == "f" * 32
    assert os.listdir(folder) == [RUN_ID_FILE]  # no temporary file left behind
    with pytest.raises(ValueError):
        save_run_id(folder, "not-an-id")


def test_a_damaged_run_id_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / RUN_ID_FILE).write_text("garbage\n")
    with pytest.raises(ConfigError, match="does not hold an MLflow run id: delete it"):
        load_run_id(tmp_path)


def test_reading_a_comparison_back_draws_no_progress_bars(
    client: Any, mlflow_experiment: str, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """MLflow draws a progress bar on stderr for every artifact it downloads; `runs` reads two
    small files per sweep and printed four bars of carriage returns for them."""
    from retro_platform.tracking.listing import (
        COMPARISON_CSV,
        COMPARISON_MARKDOWN,
        read_comparison,
    )

    artifacts = (tmp_path / "artifacts").as_uri()  # not MLflow's default, ./mlruns
    run = client.create_run(client.create_experiment(mlflow_experiment, artifacts))
    client.log_text(run.info.run_id, "# the comparison", COMPARISON_MARKDOWN)
    client.log_text(run.info.run_id, "point,bpb\n1,2.5\n", COMPARISON_CSV)
    capfd.readouterr()
    comparison = read_comparison(client, run.info.run_id)
    assert comparison is not None and comparison.markdown == "# the comparison"
    assert capfd.readouterr().err == ""
