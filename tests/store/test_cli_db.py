"""``retro-platform db current|upgrade EXPERIMENT.toml``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.store.database import open_store
from retro_platform.store.migrations import UPGRADE_COMMAND, head_revision
from retro_platform.store.urls import safe_url
from tests.store.conftest import NEXT_REVISION, set_revision, snapshot

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def experiment(database_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "experiment.toml"
    path.write_text(f'[store]\npath = "files"\nurl = "{database_url}"\n')
    return path


def db(*arguments: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["db", *map(str, arguments)])
    return result.exit_code, result.stdout, result.stderr


def test_current_and_upgrade_of_a_new_database(experiment: Path, database_url: str) -> None:
    head = head_revision()
    code, out, _ = db("current", experiment)
    assert code == 0
    assert out == (
        f"{safe_url(database_url)}: no schema yet: it is created at revision {head} on first "
        f"use, or run `retro-platform db upgrade {experiment}`\n"
    )
    assert db("upgrade", experiment) == (
        0,
        f"upgraded {safe_url(database_url)} from an empty database to {head}\n",
        "",
    )
    assert db("current", experiment) == (
        0,
        f"{safe_url(database_url)}: revision {head} (head)\n",
        "",
    )
    assert db("upgrade", experiment) == (
        0,
        f"{safe_url(database_url)} is already at revision {head} (the head): nothing to do\n",
        "",
    )


def test_an_older_database_is_reported_then_upgraded(
    experiment: Path, database_url: str, tmp_path: Path, newer_migrations: Callable[[], str]
) -> None:
    with open_store(database_url, tmp_path / "files"):
        pass
    old = newer_migrations()

    code, out, _ = db("current", experiment)
    assert code == 0
    assert out == (
        f"{safe_url(database_url)}: revision {old}, not the head {NEXT_REVISION}: "
        f"run `retro-platform db upgrade {experiment}`\n"
    )

    # what every stage command meets: one line, exit code 2, the upgrade command
    @cli.command("open-store-for-test")
    def open_store_for_test() -> None:
        open_store(database_url, tmp_path / "files")

    try:
        result = CliRunner().invoke(cli, ["open-store-for-test"])
    finally:
        del cli.commands["open-store-for-test"]
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert f"revision {old}" in result.stderr and NEXT_REVISION in result.stderr
    assert UPGRADE_COMMAND.format(file="EXPERIMENT.toml") in result.stderr
    # a command given the experiment file names it in the upgrade command
    stats = CliRunner().invoke(cli, ["store", "stats", str(experiment)])
    assert stats.exit_code == 2, stats.output
    assert f"upgrade it with `retro-platform db upgrade {experiment}`" in stats.stderr
    documented = next(
        line.strip()
        for line in (ROOT / "docs" / "store.md").read_text().splitlines()
        if line.strip().startswith("Error: the store database")
    )
    assert documented == (
        result.stderr.strip()
        .replace(safe_url(database_url), "sqlite:////home/me/exp/store/retro.db")
        .replace(old, "bf9c653d4d9a")
        .replace(NEXT_REVISION, "5d1c0a7e93b2")
    ), "docs/store.md shows another message than the one printed"

    assert db("upgrade", experiment) == (
        0,
        f"upgraded {safe_url(database_url)} from {old} to {NEXT_REVISION}\n",
        "",
    )
    assert db("current", experiment)[1].endswith(f"revision {NEXT_REVISION} (head)\n")
    with open_store(database_url, tmp_path / "files"):
        pass


def test_upgrade_refuses_an_unknown_revision_in_one_line(
    experiment: Path, database_url: str, tmp_path: Path
) -> None:
    with open_store(database_url, tmp_path / "files"):
        pass
    set_revision(database_url, "feedfacecafe")
    before = snapshot(database_url)
    code, out, err = db("upgrade", experiment)
    assert (code, out) == (2, "")
    assert err.startswith("Error: the store database ") and err.count("\n") == 1
    assert "revision feedfacecafe" in err and head_revision() in err
    assert f"`retro-platform db upgrade {experiment}` upgrades only revisions" in err
    assert snapshot(database_url) == before

    code, out, _ = db("current", experiment)
    assert code == 0 and "revision feedfacecafe, which this version" in out


def test_a_bad_experiment_file_is_exit_code_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    code, _, err = db("upgrade", missing)
    assert code == 2 and err == f"Error: experiment file {missing} does not exist\n"
    typo = tmp_path / "typo.toml"
    typo.write_text('[store]\npaht = "files"\n')
    code, _, err = db("current", typo)
    assert code == 2 and err.startswith("Error: ") and "paht" in err


def test_the_default_store_is_a_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # wherever the default lands, it lands inside tmp_path
    path = tmp_path / "experiment.toml"
    path.write_text("[experiment]\nname = 'x'\n")
    code, out, _ = db("upgrade", path)
    assert code == 0, out
    assert (tmp_path / "store" / "retro.db").is_file()
