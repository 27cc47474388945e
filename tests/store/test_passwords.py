"""A password in a database URL is never printed, logged or put in an error message."""

from __future__ import annotations

import logging
import socket
import tomllib
import traceback
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.config.resolved import logged_experiment_file
from retro_platform.errors import StoreError
from retro_platform.store.database import open_store
from retro_platform.store.migrations import schema_status, upgrade
from retro_platform.store.urls import hide_passwords, safe_url, scrub
from tests.postgres import USER, PostgresServer

#: A wrong password with characters that need escaping in a URL.
WRONG = "Wr0ng:p@ss/w%rd"
WRONG_IN_URL = quote(WRONG, safe="")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://me:secret@db.example:5432/retro", "postgresql+psycopg://me:***@db.example:5432/retro"),
        (f"postgresql+psycopg://me:{WRONG_IN_URL}@h/d", "postgresql+psycopg://me:***@h/d"),
        ("postgresql+psycopg://me@h/d", "postgresql+psycopg://me@h/d"),
        ("sqlite:////tmp/store/retro.db", "sqlite:////tmp/store/retro.db"),
        ("://me:secret@what/ever", "://me:***@what/ever"),  # not parseable: masked all the same
    ],
)  # fmt: skip
def test_safe_url(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_scrub_removes_every_spelling_of_the_password_and_makes_one_line() -> None:
    url = f"postgresql+psycopg://me:{WRONG_IN_URL}@h/d"
    text = f"failed for {url}\n  dsn: password={WRONG} or {WRONG_IN_URL}\n"
    scrubbed = scrub(text, url)
    assert WRONG not in scrubbed and WRONG_IN_URL not in scrubbed
    assert "\n" not in scrubbed
    assert scrubbed == "failed for postgresql+psycopg://me:***@h/d dsn: password=*** or ***"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _assert_hidden(error: BaseException, *secrets: str) -> None:
    everything = "".join(traceback.format_exception(error))
    for secret in secrets:
        assert secret not in everything
    assert "\n" not in str(error)


def test_connection_refused_is_one_line_without_the_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://{USER}:{WRONG_IN_URL}@127.0.0.1:{_closed_port()}/retro"
    with pytest.raises(StoreError, match="cannot open the store database") as refused:
        open_store(url, tmp_path)
    _assert_hidden(refused.value, WRONG, WRONG_IN_URL)
    assert f"{USER}:***@127.0.0.1" in str(refused.value)


@pytest.mark.postgres
def test_a_wrong_password_is_one_line_without_the_password(
    postgres_server: PostgresServer,
    postgres_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = postgres_url.replace(postgres_server.password, WRONG_IN_URL)
    caplog.set_level(logging.DEBUG)
    for attempt in (
        lambda: open_store(url, tmp_path),
        lambda: upgrade(url),
        lambda: schema_status(url),
    ):
        with pytest.raises(StoreError) as refused:
            attempt()
        assert "password authentication failed" in str(refused.value)
        _assert_hidden(refused.value, WRONG, WRONG_IN_URL, postgres_server.password)
    assert WRONG not in caplog.text and WRONG_IN_URL not in caplog.text


@pytest.mark.postgres
def test_the_cli_prints_no_password(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'[store]\npath = "files"\nurl = "{postgres_url}"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'[store]\npath = "files"\nurl = "{postgres_url.replace(postgres_server.password, WRONG_IN_URL)}"\n'
    )
    runner = CliRunner()
    for arguments in (["db", "upgrade", str(good)], ["db", "current", str(good)]):
        result = runner.invoke(cli, arguments)
        assert result.exit_code == 0, result.output
        assert postgres_server.password not in result.output and "***" in result.output
    for arguments in (["db", "upgrade", str(bad)], ["db", "current", str(bad)]):
        result = runner.invoke(cli, arguments)
        assert result.exit_code == 2
        assert result.output.startswith("Error: cannot ") and result.output.count("\n") == 1
        assert "password authentication failed" in result.output
        assert WRONG not in result.output and WRONG_IN_URL not in result.output


# ---------------------------------------------------------------- the logged experiment file


def test_the_logged_experiment_file_masks_every_password_and_stays_toml(tmp_path: Path) -> None:
    path = tmp_path / "experiment.toml"
    path.write_text(
        "# before: postgresql+psycopg://me:0ldSecret@old/retro\n"
        "[store]\n"
        f'url = "postgresql+psycopg://me:{WRONG_IN_URL}@db:5432/retro"  # the store\n'
        "[mlflow]\n"
        "tracking_uri = 'postgresql://m:Tr4ck3r@h/mlflow'\n"
        "[sweep]\n"
        '"store.url" = ["postgresql+psycopg://me:sw\\u0065pt@db/a"]\n'  # a TOML escape
    )
    text = logged_experiment_file(path)
    assert text is not None
    for secret in ("0ldSecret", WRONG, WRONG_IN_URL, "Tr4ck3r", "swept", "sw\\u0065pt"):
        assert secret not in text
    logged = tomllib.loads(text)
    assert logged["store"]["url"] == "postgresql+psycopg://me:***@db:5432/retro"
    assert logged["mlflow"]["tracking_uri"] == "postgresql://m:***@h/mlflow"
    assert logged["sweep"]["store.url"] == ["postgresql+psycopg://me:***@db/a"]
    assert "# the store\n" in text and text.startswith("# before: postgresql+psycopg://me:***@")


def test_a_file_without_passwords_is_logged_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "experiment.toml"
    path.write_bytes(b'# as written\r\n[store]\r\nurl = "postgresql+psycopg://me@db/retro"\r\n')
    assert logged_experiment_file(path) == path.read_bytes().decode()


def test_hide_passwords_masks_urls_at_any_depth() -> None:
    grid = {"store.url": ["postgresql+psycopg://me:pw@h/a", "sqlite:///x.db"], "train.lr": [1]}
    assert hide_passwords(grid) == {
        "store.url": ["postgresql+psycopg://me:***@h/a", "sqlite:///x.db"],
        "train.lr": [1],
    }


# ---------------------------------------------------------------- passwords from the environment


def _without_password(postgres_server: PostgresServer, postgres_url: str) -> str:
    url = postgres_url.replace(f":{postgres_server.password}@", "@")
    assert postgres_server.password not in url
    return url


@pytest.mark.postgres
def test_pgpassword_supplies_the_password(
    postgres_server: PostgresServer,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = _without_password(postgres_server, postgres_url)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(StoreError) as refused:
        open_store(url, tmp_path)
    assert "no password supplied" in str(refused.value)
    assert "PGPASSWORD" in str(refused.value) and "\n" not in str(refused.value)

    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    with open_store(url, tmp_path) as store, store.engine.connect() as connection:
        assert connection.exec_driver_sql("select current_user").scalar() == USER


@pytest.mark.postgres
def test_pgpassfile_supplies_the_password(
    postgres_server: PostgresServer,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = _without_password(postgres_server, postgres_url)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres_server.port}:*:{USER}:{postgres_server.password}\n")
    passfile.chmod(0o600)  # libpq ignores a password file that others can read
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    experiment = tmp_path / "experiment.toml"
    experiment.write_text(f'[store]\npath = "files"\nurl = "{url}"\n')
    result = CliRunner().invoke(cli, ["db", "upgrade", str(experiment)])
    assert result.exit_code == 0, result.output
    with open_store(url, tmp_path) as store, store.engine.connect() as connection:
        assert connection.exec_driver_sql("select current_user").scalar() == USER
