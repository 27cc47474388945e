"""A password in a database URL is never printed, logged or put in an error message."""

from __future__ import annotations

import logging
import socket
import traceback
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.errors import StoreError
from retro_platform.store.database import open_store
from retro_platform.store.migrations import schema_status, upgrade
from retro_platform.store.urls import safe_url, scrub
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
