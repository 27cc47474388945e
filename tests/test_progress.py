"""Progress in a log: every long stage prints whole lines at an interval, never a tqdm bar's
carriage returns; on a terminal (or with ``--progress``) it draws a bar."""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from retro_platform import progress as progress_module
from retro_platform.cli import cli
from retro_platform.progress import (
    EVERY_VARIABLE,
    LogLines,
    chosen,
    every,
    heartbeat,
    note,
    progress,
    use_bar,
)
from tests.runner.helpers import tiny_experiment


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_rule_a_bar_on_a_terminal_lines_in_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not use_bar() and isinstance(progress(desc="x"), LogLines)
    assert use_bar(True) and not isinstance(progress(desc="x", enabled=True), LogLines)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert use_bar() and not use_bar(False)


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVERY_VARIABLE, raising=False)
    assert every() == 30
    for value, expected in (("0.2", 0.2), ("nonsense", 30), ("-1", 30)):
        monkeypatch.setenv(EVERY_VARIABLE, value)
        assert every() == expected


def test_log_lines_are_whole_lines_at_most_one_an_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(EVERY_VARIABLE, "0.1")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress(total=30, desc="embed", unit="chunk") as bar:
        for step in range(30):
            time.sleep(0.01)
            bar.update(1)
            bar.set_postfix(added=step)
            if step == 20:
                note(bar, "a line of the stage's own")
    text = sys.stderr.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "embed: 0/30 chunk (0%)"
    assert re.fullmatch(
        r"embed: 30/30 chunk \(100%\) in 00:00, [\d.]+ chunk/s, added=29", lines[-1]
    )
    periodic = [line for line in lines[1:-1] if line.startswith("embed: ")]
    assert 1 <= len(periodic) <= 5  # 0.3 s of work, a line at most every 0.1 s
    assert all(re.search(r"chunk/s, eta \d\d:\d\d", line) for line in periodic)
    assert "a line of the stage's own" in lines


#: Each long stage of a run, by the name its progress lines start with.
STAGES = ("ingest", "embed", "index add", "neighbours", "train", "evaluate", "samples")


def test_a_run_in_a_log_prints_progress_lines_for_every_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EVERY_VARIABLE, "0.000001")  # a line at every update
    monkeypatch.setattr(
        "retro_platform.default_plugins.retrievers._faiss.ADD_BATCH", 64
    )  # so that the index is added in batches, as a large one is
    path = tiny_experiment(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(path)])  # stderr is no terminal here
    assert result.exit_code == 0, result.stderr
    err = result.stderr
    assert "\r" not in err and "|" not in err  # no tqdm bar
    lines = err.splitlines()
    for stage in STAGES:
        mine = [line for line in lines if line.startswith(f"{stage}: ")]
        assert len(mine) >= 3, (stage, mine)  # a start, at least one on the way, an end
        assert re.search(r" in \d\d:\d\d", mine[-1]), mine[-1]
    assert re.search(r"^building faiss-flat index over \d+ chunks", result.stdout, re.M)
    assert re.search(r"^built faiss-flat index over \d+ chunks in [\d.]+ s", result.stdout, re.M)
    assert re.search(r"^step 6/6  loss", err, re.M)  # training's own lines still come


def test_progress_asks_for_bars_even_in_a_log(tmp_path: Path) -> None:
    path = tiny_experiment(tmp_path)
    result = CliRunner().invoke(cli, ["ingest", str(path), "--progress"])
    assert result.exit_code == 0, result.stderr
    assert "\r" in result.stderr and "ingest: 100%|" in result.stderr
    assert progress_module.DEFAULT_EVERY == 30


def test_a_retrievers_own_bar_follows_the_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Faiss retrievers' "index add" is the plugin's bar, not the stage's: ``--progress``
    reaches it through :func:`~retro_platform.progress.chosen`, in a log and on a terminal."""
    monkeypatch.setattr("retro_platform.default_plugins.retrievers._faiss.ADD_BATCH", 64)
    path = tiny_experiment(tmp_path)
    assert CliRunner().invoke(cli, ["ingest", str(path)]).exit_code == 0
    result = CliRunner().invoke(cli, ["index", str(path), "--progress"])  # stderr: no terminal
    assert result.exit_code == 0, result.stderr
    assert "index add: 100%|" in result.stderr
    with chosen(False):
        monkeypatch.setattr(sys, "stderr", _Terminal())
        assert not use_bar() and isinstance(progress(desc="x"), LogLines)
    assert use_bar()  # outside the block: the terminal decides again


def test_a_long_single_call_beats_in_a_log_and_stays_quiet_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RETRO_PLATFORM_PROGRESS_EVERY", "0.05")
    with heartbeat("building faiss-ivfpq index"):
        time.sleep(0.4)  # a Faiss train: one call, nothing reported from inside
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3
    assert all(
        re.fullmatch(r"building faiss-ivfpq index: still running, 00:0\d elapsed", line)
        for line in lines
    ), lines
    with heartbeat("building faiss-ivfpq index", enabled=True):
        time.sleep(0.2)
    assert capsys.readouterr().err == ""
