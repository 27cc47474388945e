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
from tests.disk import SmallDisk, one_line_error, pages, partials, run_cli, small_disk
from tests.runner.helpers import tiny_experiment

__all__ = ["small_disk"]  # the fixture

#: A model whose checkpoint (about 2.5 MB) is larger than any other file a run writes.
WIDER = {"model": {"dec_dim": 96, "enc_dim": 96}}


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
    store = {"path": str(tmp_path / "store")}  # one store for both experiments
    limited = tiny_experiment(tmp_path / "limited", store=store, **WIDER)
    full = tiny_experiment(
        tmp_path / "full", store=store, train={"output": str(small_disk.path)}, **WIDER
    )

    # a file size limit below the checkpoint's size: the first save fails, nothing is left
    failed = run_cli("run", limited, "--no-progress", file_size_limit=1_500_000)
    line = one_line_error(failed.returncode, failed.stderr)
    assert line.startswith(f"Error: file too large: {tmp_path / 'limited' / 'runs'}/"), line
    assert line.endswith(
        f"/{CHECKPOINT_NAME} passes the file size limit (1.5 MB); raise it (ulimit -f) and "
        "rerun: training resumes from the last checkpoint saved"
    )
    assert not list((tmp_path / "limited" / "runs").rglob(CHECKPOINT_NAME))
    assert not partials(tmp_path / "limited" / "runs")
    code, stderr = invoke("run", limited)
    assert code == 0, stderr
    expected = load_checkpoint(checkpoint_in(tmp_path / "limited" / "runs"))
    size = pages(checkpoint_in(tmp_path / "limited" / "runs").stat().st_size)

    # a disk with room for one checkpoint: the second save (old and new side by side) fails
    small_disk.resize(size * 3 // 2)
    code, stderr = invoke("run", full)
    line = one_line_error(code, stderr)
    assert line.startswith(f"Error: no space left on {small_disk.path}/"), line
    assert f"/{CHECKPOINT_NAME}: " in line and line.endswith(
        " MB free; free space and rerun: training resumes from the last checkpoint saved"
    ), line
    kept = load_checkpoint(checkpoint_in(small_disk.path))
    assert kept["step"] == 3 and not partials(small_disk.path)

    small_disk.resize(small_disk.used + 2 * size)
    code, stderr = invoke("run", full)
    assert code == 0, stderr
    resumed = load_checkpoint(checkpoint_in(small_disk.path))
    assert resumed["step"] == expected["step"] == 6
    model, reference = resumed["model"], expected["model"]
    assert model.keys() == reference.keys()
    assert all(torch.equal(model[name], reference[name]) for name in model)
