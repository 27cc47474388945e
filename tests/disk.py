"""A disk that fills up, for the tests of what a full disk or a file size limit does: a small
tmpfs (needs root on Linux; skipped otherwise), and the command line run in a subprocess under a
file size limit (``RLIMIT_FSIZE``).

A full disk can kill the process (``SIGBUS`` from a memory map), so the commands that could are
run in a subprocess, never in pytest's own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = 4096


def pages(size: int) -> int:
    """``size`` bytes rounded up to whole pages: what a tmpfs takes for them."""
    return -(-size // PAGE) * PAGE


class SmallDisk:
    """A tmpfs mounted at ``path`` whose size the test sets (:meth:`resize`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def used(self) -> int:
        return shutil.disk_usage(self.path).used

    def resize(self, size: int) -> None:
        """Make the disk ``size`` bytes (at least what it holds: a tmpfs cannot shrink below)."""
        subprocess.run(
            ["mount", "-o", f"remount,size={pages(size)}", str(self.path)],
            check=True,
            capture_output=True,
        )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 64 kB tmpfs at ``tmp_path / "disk"``, unmounted after the test."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if sys.platform != "linux" or getattr(os, "geteuid", lambda: 1)() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs: needs root on Linux")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {mounted.stderr.strip()}")
    try:
        yield SmallDisk(folder)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def run_cli(*args: Any, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """``retro-platform ARGS`` in a subprocess, under a file size limit (bytes) if given: a
    write past it fails with ``EFBIG`` (``SIGXFSZ`` is ignored, so it does not kill)."""

    def limit() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, hard))

    return subprocess.run(
        [sys.executable, "-m", "retro_platform.cli", *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        preexec_fn=None if file_size_limit is None else limit,
        timeout=300,
    )


def one_line_error(code: int, stderr: str) -> str:
    """The ``Error: ...`` line a command ended with; checks that it exited with 2 and printed
    no traceback."""
    assert code == 2, f"exit {code}: {stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("Error: "), stderr[-3000:]
    return line


def partials(folder: Path) -> list[Path]:
    """Temporary files of atomic writes left anywhere under ``folder``."""
    return sorted(folder.rglob(".*.partial*"))
