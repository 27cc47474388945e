"""``retro-platform run`` when a checkpoint does not fit: a file size limit or a full disk is one
``Error:`` line (exit 2), the previous checkpoint is kept, and the rerun resumes to the same
weights an uninterrupted run ends with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tests.disk import SmallDisk, one_line_error, partials, run_cli, small_disk
from tests.runner.helpers import tiny_experiment

__all__ = ["small_disk"]  # the fixture

#: A model whose checkpoint (about 2.5 MB) is larger than any other file a run writes.
WIDER = {"model": {"dec_dim": 96, "enc_dim": 96}}
#: About its size (checked below): the small disk holds one but not two.
CHECKPOINT_BYTES = 2_900_000


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*map(str, args), "--no-progress"])
    return result.exit_code, result.stderr


def checkpoint_in(output: Path) -> Path:
    (path,) = output.glob(f"*/{CHECKPOINT_NAME}")
    return path


@pytest.mark.slow
def test_a_checkpoint_past_a_size_limit_or_a_full_disk_is_one_line_and_the_rerun_resumes(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    # one store and one MLflow database for both experiments: each is made once
    shared = {
        "store": {"path": str(tmp_path / "store")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    full = tiny_experiment(
        tmp_path / "full", train={"output": str(small_disk.path)}, **shared, **WIDER
    )
    limited = tiny_experiment(tmp_path / "limited", **shared, **WIDER)
    runs = tmp_path / "limited" / "runs"

    # a disk with room for one checkpoint: the second save (old and new side by side) fails
    small_disk.resize(3 * CHECKPOINT_BYTES // 2)
    code, stderr = invoke("run", full)
    line = one_line_error(code, stderr)
    assert line.startswith(f"Error: no space left on {small_disk.path}/"), line
    assert f"/{CHECKPOINT_NAME}: " in line and line.endswith(
        " MB free; free space and rerun: training resumes from the last checkpoint saved"
    ), line
    kept = load_checkpoint(checkpoint_in(small_disk.path))
    assert kept["step"] == 3 and not partials(small_disk.path)

    # a file size limit below the checkpoint's size: the first save fails, nothing is left
    failed = run_cli("run", limited, "--no-progress", file_size_limit=1_500_000)
    line = one_line_error(failed.returncode, failed.stderr)
    assert line.startswith(f"Error: file too large: {runs}/"), line
    assert line.endswith(
        f"/{CHECKPOINT_NAME} passes the file size limit (1.5 MB); raise it (ulimit -f) and "
        "rerun: training resumes from the last checkpoint saved"
    )
    assert not list(runs.rglob(CHECKPOINT_NAME)) and not partials(runs)
    code, stderr = invoke("run", limited)
    assert code == 0, stderr
    expected = load_checkpoint(checkpoint_in(runs))
    size = checkpoint_in(runs).stat().st_size
    assert 0.8 < size / CHECKPOINT_BYTES < 1.4, f"the disk was sized for another checkpoint: {size}"

    small_disk.resize(small_disk.used + 2 * CHECKPOINT_BYTES)
    code, stderr = invoke("run", full)
    assert code == 0, stderr
    resumed = load_checkpoint(checkpoint_in(small_disk.path))
    assert resumed["step"] == expected["step"] == 6
    model, reference = resumed["model"], expected["model"]
    assert model.keys() == reference.keys()
    assert all(torch.equal(model[name], reference[name]) for name in model)
