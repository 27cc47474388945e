"""``retro-platform ui`` and ``retro-platform runs``: the tracked runs, in a browser or a table."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import click

from retro_platform.cli.common import experiment_argument, set_option
from retro_platform.cli.group import cli
from retro_platform.config import load_experiment
from retro_platform.errors import ConfigError
from retro_platform.text_table import text_table

_STOP_TIMEOUT_S = 10.0
#: How long --open waits for the UI to answer (a first start takes a minute on 2 cores).
_START_TIMEOUT_S = 300.0


@cli.command()
@experiment_argument
@set_option
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to listen on (loopback)."
)
@click.option(
    "--port", default=5000, show_default=True, type=click.IntRange(1, 65535), help="Port."
)
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(1), help="Server processes."
)
@click.option(
    "--open",
    "open_browser",
    is_flag=True,
    help="Open the experiment's runs in a web browser once the UI answers.",
)
def ui(
    experiment_file: str,
    overrides: tuple[str, ...],
    host: str,
    port: int,
    workers: int,
    open_browser: bool,
) -> None:
    """Start the MLflow UI on the experiment's tracking store; Ctrl-C stops it.

    Serves the tracking database of [mlflow] tracking_uri, else MLFLOW_TRACKING_URI, else
    mlflow.db beside the experiment file, and prints the link to the experiment's runs table
    (MLflow 3 would otherwise open its GenAI overview); --open opens it in a browser. A tracking
    server has its own UI: open its URL instead. The first start can take a minute on a slow
    machine.
    """
    from retro_platform.tracking.client import TrackingError, quiet_mlflow_environment
    from retro_platform.tracking.uri import (
        HTTP_SCHEMES,
        check_reachable,
        experiment_name,
        is_database_uri,
        runs_page_url,
        safe_uri,
        scheme,
        tracking_uri,
    )

    experiment = load_experiment(experiment_file, overrides)
    uri = tracking_uri(experiment)
    if scheme(uri) in HTTP_SCHEMES:
        raise ConfigError(
            f"the tracking URI is a server, {safe_uri(uri)}: open that URL in a browser, it is "
            "the UI"
        )
    if not is_database_uri(uri):
        raise ConfigError(
            f"retro-platform ui serves a tracking database (sqlite:///..., postgresql://...), "
            f"not {safe_uri(uri)}: open that tracking store's own UI"
        )
    check_reachable(uri)
    _check_port_free(host, port)
    quiet_mlflow_environment()
    command = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", uri,
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    name = experiment_name(experiment)
    experiment_id = _experiment_id(uri, name)
    link = runs_page_url(_browsable(url, host, port), experiment_id)
    click.echo(f"MLflow UI of {safe_uri(uri)} at {url} (Ctrl-C stops it)")
    if experiment_id is None:
        click.echo(f"experiment {name!r} has no runs yet; the experiments: {link}")
    else:
        click.echo(f"the runs of experiment {name!r}: {link}")
    env = dict(os.environ)
    # MLflow's job runner (GenAI scoring, trace archival) is eight more processes that a
    # UI of training runs never uses
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    server = _start_server(command, env)
    if open_browser:
        threading.Thread(
            target=_open_when_up, args=(server, _browsable(url, host, port), link), daemon=True
        ).start()
    # Ctrl-C and TERM both stop it, even where SIGINT was ignored when this process started
    # (a background job of a script inherits that, and Python then never raises for it)
    previous = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        code = server.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        _stop(server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0:
        raise TrackingError(f"the MLflow UI stopped with exit code {code} (its messages are above)")


@cli.command()
@experiment_argument
@set_option
@click.option("--all-params", is_flag=True, help="Show every param, not only those that differ.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
def runs(experiment_file: str, overrides: tuple[str, ...], all_params: bool, as_json: bool) -> None:
    """List the experiment's MLflow runs: status, the params that differ between runs, and
    the final val/bpb, val/bpb_retrieval_off, val/loss and train/loss.

    A sweep's runs are listed under their parent run, indented. A sweep over train.neighbours
    is followed by its comparison: each point's validation bits per byte by how much a chunk
    overlaps its retrieved neighbours.
    """
    from retro_platform.tracking import listing
    from retro_platform.tracking.client import open_client, tracking_errors
    from retro_platform.tracking.uri import experiment_name, safe_uri, sqlite_path, tracking_uri

    experiment = load_experiment(experiment_file, overrides)
    uri = tracking_uri(experiment)
    name = experiment_name(experiment)
    database = sqlite_path(uri)
    found: list[listing.RunSummary] = []
    compared: dict[str, listing.SweepComparison] = {}
    if database is None or database.exists():  # a listing never creates a database
        client = open_client(uri)
        with tracking_errors(uri, "list the runs of"):
            mlflow_experiment = client.get_experiment_by_name(name)
            if mlflow_experiment is not None and mlflow_experiment.lifecycle_stage == "active":
                found = listing.list_runs(client, mlflow_experiment.experiment_id)
            for run in found:
                if run.has_comparison and (read := listing.read_comparison(client, run.run_id)):
                    compared[run.run_id] = read
    keys = listing.all_params(found) if all_params else listing.differing_params(found)
    if as_json:
        listed = [run.as_json(keys, compared.get(run.run_id)) for run in found]
        click.echo(json.dumps(listed, indent=2))
        return
    if not found:
        click.echo(
            f"No runs of experiment {name!r} in {safe_uri(uri)} yet: "
            f"retro-platform run {experiment_file} starts one."
        )
        return
    header, rows = listing.table_rows(found, keys)
    click.echo(text_table(header, rows))
    for run in found:
        if run.run_id in compared:
            click.echo(
                f"\n{run.name} ({run.run_id[:8]}): {compared[run.run_id].markdown}", nl=False
            )


def _start_server(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # its own process group, so that stopping it reaches the server's workers too
    return subprocess.Popen(command, env=env, start_new_session=True)


def _experiment_id(uri: str, name: str) -> str | None:
    """The id of the active MLflow experiment ``name``, or None (a database that does not exist
    yet is not created here)."""
    from retro_platform.tracking.client import open_client, tracking_errors
    from retro_platform.tracking.uri import sqlite_path

    database = sqlite_path(uri)
    if database is not None and not database.exists():
        return None
    client = open_client(uri)
    with tracking_errors(uri, "read the experiments of"):
        found = client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage != "active":
        return None
    return str(found.experiment_id)


def _browsable(url: str, host: str, port: int) -> str:
    """``url``, or the loopback one where the server listens on every interface."""
    if host in ("0.0.0.0", "::", ""):
        return f"http://127.0.0.1:{port}"
    return url


def _open_when_up(server: subprocess.Popen[bytes], url: str, link: str) -> None:
    """Open ``link`` in a web browser once the UI at ``url`` answers (never, if it stops)."""
    # lazy: keeps them out of retro-platform --help
    import urllib.request
    import webbrowser

    deadline = time.monotonic() + _START_TIMEOUT_S
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    webbrowser.open(link)
                    return
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as the server will: a port in TIME_WAIT is free, a listening one is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({(error.strerror or str(error)).lower()}): "
                "pass another --port, or --host 127.0.0.1"
            ) from None


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group: TERM, then KILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, _STOP_TIMEOUT_S), (signal.SIGKILL, _STOP_TIMEOUT_S)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its workers may not be
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
