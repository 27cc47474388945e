"""A finished run outlives a change of its store's documents: the run folder's key is the
resolved configuration only, so adding or removing documents neither reruns nor retrains it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from retro_platform.cli import cli
from tests.runner.helpers import runs_of, tiny_experiment
from tests.runner.test_run import folder_of, run_cli


def test_a_finished_run_is_found_after_documents_are_added_and_removed(tmp_path: Path) -> None:
    path = tiny_experiment(tmp_path)
    assert run_cli(str(path))[0] == 0
    folder = folder_of(path)

    (tmp_path / "corpus" / "zorblaxia.txt").write_text("The capital of Zorblaxia is Quennith.\n")
    runner = CliRunner()
    for args in (
        ["ingest", str(path)],
        ["index", str(path)],
        ["ingest", str(path), "--remove", "glob.py"],
        ["index", str(path)],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    assert "(no rebuild" in result.output

    assert folder_of(path) == folder
    code, out, _ = run_cli(str(path))
    assert code == 0 and "finished earlier" in out
    assert len(runs_of(path)) == 1
