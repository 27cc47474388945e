"""A run on a PostgreSQL store whose URL holds a password leaves no byte of it behind: not in
MLflow's database, not in any artifact, not in the run folder, not in the output."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from tests.postgres import USER, PostgresServer
from tests.runner.helpers import client_for, runs_of, tiny_experiment


def files_holding(folder: Path, secret: bytes, *, skip: Path) -> list[Path]:
    """Every file under ``folder`` (recursively, raw bytes) with ``secret`` in it."""
    return [
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path != skip and secret in path.read_bytes()
    ]


@pytest.mark.postgres
def test_a_run_on_a_postgres_store_leaves_its_password_nowhere(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    password = postgres_server.password
    assert password in postgres_url
    path = tiny_experiment(tmp_path, store={"url": postgres_url})
    assert password in path.read_text()  # the one place it may be: the file the user wrote

    result = CliRunner().invoke(cli, ["run", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert password not in result.output

    (run,) = runs_of(path)
    assert run.info.status == "FINISHED"
    # MLflow's database, its artifact store, the run folder, the store's files: raw bytes
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()
    assert files_holding(tmp_path, password.encode(), skip=path) == []

    # the logged experiment file: the same file, valid TOML, the password masked as elsewhere
    logged = client_for(path).download_artifacts(
        run.info.run_id, "config/experiment.toml", str(tmp_path / "download")
    )
    text = Path(logged).read_text()
    masked = postgres_url.replace(password, "***")
    assert tomllib.loads(text)["store"]["url"] == masked
    assert text == path.read_text().replace(postgres_url, masked)
    assert run.data.params["store.url"] == masked
    assert f"{USER}:***@" in text
