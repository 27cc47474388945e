"""What `run --nproc` (``retro_platform.training.launch``) exits with and says when a process
of the run fails."""

from __future__ import annotations

import signal
from pathlib import Path

from retro_platform.training.launch import (
    FAILURES,
    another_failed,
    exit_code_and_message,
    record_failure,
    recorded_failures,
)


def test_a_recorded_error_gives_its_exit_code_and_no_second_line(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(FAILURES, str(tmp_path))
    monkeypatch.setenv("RANK", "0")
    record_failure(2, "[corpus] include: no file matches")
    assert recorded_failures() == [
        {"rank": 0, "code": 2, "message": "[corpus] include: no file matches"}
    ]
    assert another_failed(1) and not another_failed(0)
    # process 1 failed too (its wait broke) and torchrun stopped process 0 before it exited
    failures = {0: -signal.SIGTERM, 1: 1}
    assert exit_code_and_message(failures, recorded_failures(), 2) == (2, None)


def test_without_a_record_the_process_that_torchrun_did_not_stop_is_named() -> None:
    code, message = exit_code_and_message({0: -signal.SIGTERM, 1: -signal.SIGKILL}, [], 2)
    assert code == 1
    assert message.startswith(
        "process 1 of 2 was killed by SIGKILL and torchrun stopped the others"
    )
    code, message = exit_code_and_message({1: 1}, [], 4)
    assert (code, message.split(" and ")[0]) == (1, "process 1 of 4 failed with exit code 1")


def test_no_record_outside_the_launcher(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(FAILURES, raising=False)
    record_failure(2, "anything")
    assert recorded_failures() == [] and not another_failed(0)
