"""A real, throwaway ``mlflow server`` for the tests, on loopback, with a PostgreSQL backend.

``mlflow_server`` (one per test module) runs ``python -m mlflow server`` on 127.0.0.1 on a free
port, with its runs in a fresh database of the session's PostgreSQL server
(``--backend-store-uri postgresql+psycopg://...``: psycopg 3, the driver the store uses too)
and its artifacts proxied (``--serve-artifacts --artifacts-destination DIR``): clients upload
and download them through the server's HTTP API, never touching DIR themselves, as on a shared
server. It runs in a process group of its own, which the finalizer kills whole (gunicorn or
uvicorn and their workers), whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.postgres import PostgresServer, _free_port

#: How long the server may take to answer its first request (40-60 s on 2 busy cores).
START_S = 240


@dataclass(frozen=True)
class MlflowServer:
    url: str  # http://127.0.0.1:PORT
    backend_uri: str  # the PostgreSQL database it keeps runs in (with its password)
    artifacts: Path  # where it stores the artifacts it proxies
    log: Path


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def start_mlflow_server(
    postgres: PostgresServer, folder: Path
) -> tuple[MlflowServer, subprocess.Popen[bytes]]:
    """Start the server; return it once ``/health`` answers, with its process."""
    name = f"mlflow_{uuid.uuid4().hex[:12]}"
    postgres.create_database(name)
    backend = postgres.url(name)
    port = _free_port()
    artifacts = folder / "artifacts"
    log = folder / "mlflow-server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # eight idle processes otherwise
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed whole by stop_mlflow_server
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", backend, artifacts, log)
    deadline = time.monotonic() + START_S
    while not _healthy(server.url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_mlflow_server(process)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"mlflow server did not start:\n{tail}")
        time.sleep(0.5)
    return server, process


def stop_mlflow_server(process: subprocess.Popen[bytes]) -> None:
    """Kill the server's whole process group (the server and its workers)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """A running ``mlflow server`` (PostgreSQL backend, proxied artifacts) for one module."""
    server, process = start_mlflow_server(postgres_server, tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        stop_mlflow_server(process)
