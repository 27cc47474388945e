"""A store this process may not write (a read-only mount, another user's files) serves every
command that reads it and refuses, in one line, those that write; nothing in it changes.

The commands run in a child process that really cannot write the store folder: as a normal
user the folder is made read-only (``chmod a-w``); as root, which ignores permission bits, the
child also loses the capabilities that let root override them (``CAP_DAC_OVERRIDE`` and kin),
as on a read-only mount.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from tests.pipeline.helpers import write_experiment, write_stdlib_corpus
from tests.runner.helpers import tiny_experiment

ROOT = Path(__file__).resolve().parents[2]
_PR_CAPBSET_DROP = 24
#: CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root write another's files
_OVERRIDES = (1, 2, 3)


def _without_overrides() -> None:  # runs in the child, before exec
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in _OVERRIDES:
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def as_reader(*command: str, cwd: Path, reader: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python COMMAND`` as a process that cannot write the store (``reader=False``: as
    this one)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_without_overrides if reader and os.geteuid() == 0 else None,
    )


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and folder under ``folder``: its bytes (files) and modification time."""
    return {
        str(path.relative_to(folder)): (
            path.read_bytes() if path.is_file() else b"",
            path.stat().st_mtime_ns,
        )
        for path in sorted([folder, *folder.rglob("*")])
    }


def skip_unless_read_only(store: Path) -> None:
    """Skip when a child cannot be kept from writing (root without the right to drop them)."""
    probe = as_reader("-c", f"open({str(store / 'retro.db')!r}, 'ab')", cwd=store)
    if "PermissionError" not in probe.stderr:
        pytest.skip(f"cannot make the store read-only for a child process: {probe.stderr}")


def set_writable(folder: Path, writable: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


#: Runs the CLI commands of argv[1] (JSON) in one child process (one start-up, not one each).
_COMMANDS = """
import json, sys
from click.testing import CliRunner
from retro_platform.cli import cli
results = []
for arguments in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, arguments)
    results.append([result.exit_code, result.stdout, result.stderr])
print(json.dumps(results))
"""


def run_commands(
    commands: list[list[str]], path: Path, *, reader: bool = True
) -> list[tuple[int, str, str]]:
    """``(exit code, stdout, stderr)`` of each CLI command, run in one child (:func:`as_reader`)."""
    child = as_reader("-c", _COMMANDS, json.dumps(commands), cwd=path.parent, reader=reader)
    assert child.returncode == 0, child.stderr
    return [tuple(result) for result in json.loads(child.stdout.splitlines()[-1])]


@pytest.fixture
def read_only_store(tmp_path: Path):
    """An ingested, indexed store (hashing embedder, exact Faiss) that the children cannot
    write; ``(experiment file, store folder)``."""
    corpus = write_stdlib_corpus(tmp_path / "corpus", ("bisect.py", "colorsys.py"))
    path = write_experiment(tmp_path, corpus)
    # built by a process that ends: as a store is left, without WAL's -wal and -shm files
    built = run_commands([["ingest", str(path)], ["index", str(path)]], path, reader=False)
    assert [code for code, _, _ in built] == [0, 0], built
    store = tmp_path / "store"
    assert sorted(file.name for file in store.glob("retro.db*")) == ["retro.db"]
    set_writable(store, False)
    try:
        skip_unless_read_only(store)
        yield path, store
    finally:
        set_writable(store, True)


def test_a_read_only_store_serves_every_read_command(read_only_store) -> None:
    path, store = read_only_store
    before = snapshot(store)
    commands = [
        ["search", str(path), "def insort", "-k", "2"],
        ["store", "stats", str(path)],
        ["store", "check", str(path)],
        ["db", "current", str(path)],
        ["store", "prune", str(path), "--dry-run"],
        ["ingest", str(path), "--no-progress"],
        ["index", str(path), "--no-progress"],
        ["db", "upgrade", str(path)],
        ["store", "prune", str(path)],
    ]
    found, stats, checked, current, pruned, *refused = run_commands(commands, path)

    assert found[0] == 0, found[2]
    assert found[1].startswith("1. score ") and "bisect.py" in found[1]
    assert stats[0] == 0, stats[2]
    assert f"store sqlite:///{store / 'retro.db'}  files {store}" in stats[1]
    assert checked[0] == 0, checked[2]
    assert checked[1].endswith("store is consistent\n")
    assert current[0] == 0 and "(head)" in current[1], current[2]
    assert pruned[0] == 0, pruned[2]
    assert "would be removed" in pruned[1]
    for code, _, error in refused:
        assert code == 2
        assert error == (
            f"Error: the store sqlite:///{store / 'retro.db'} is read-only here "
            f"({store / 'retro.db'} is not writable): this command writes to it; search, "
            "store stats, store check, store prune --dry-run and generate can read it as it is\n"
        )
    assert snapshot(store) == before


def test_search_before_ingest_or_index_names_the_command_that_builds_it(tmp_path: Path) -> None:
    corpus = write_stdlib_corpus(tmp_path / "corpus", ("bisect.py",))
    path = write_experiment(tmp_path, corpus)
    runner = CliRunner()
    for read in (["search", str(path), "def"], ["store", "stats", str(path)]):
        result = runner.invoke(cli, read)  # no store yet: none is created to say so
        assert result.exit_code == 2 and "not ingested" in result.output, result.output
        assert not (tmp_path / "store").exists()
    for missing, command in (("ingested", "ingest"), ("index", "index")):
        result = runner.invoke(cli, ["search", str(path), "def"])
        assert result.exit_code == 2
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
        assert missing in result.output
        assert result.output.endswith(f"run: retro-platform {command} {path}\n")
        assert runner.invoke(cli, [command, str(path), "--no-progress"]).exit_code == 0
    assert runner.invoke(cli, ["search", str(path), "def"]).exit_code == 0


@pytest.mark.slow
def test_generate_reads_a_read_only_store(tmp_path: Path) -> None:
    path = tiny_experiment(tmp_path)
    built = run_commands([["run", str(path), "--no-progress"]], path, reader=False)
    assert built[0][0] == 0, built
    store = tmp_path / "store"
    set_writable(store, False)
    try:
        skip_unless_read_only(store)
        before = snapshot(store)
        [(code, out, err)] = run_commands(
            [["generate", str(path), "def f(x):", "--max-tokens", "8"]], path
        )
        assert code == 0, err
        assert "Sources (the neighbours of each completed chunk" in out and "retrieval on" in err
        assert snapshot(store) == before
    finally:
        set_writable(store, True)
