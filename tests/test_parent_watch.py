"""A process started in a session of its own ends soon after its parent is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The child: watches its parent, then would sleep for a minute.
CHILD = """
import time
from retro_platform.parent_watch import exit_with_parent
exit_with_parent(3, "parent gone")
time.sleep(60)
"""

#: The parent: starts the child in a session of its own (as torchrun does), prints its pid.
PARENT = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], start_new_session=True,
                         stderr=open(sys.argv[1], "w"))
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_in_its_own_session_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    said = tmp_path / "child-stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(said)], env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    child = int(parent.stdout.readline())
    try:
        time.sleep(1.5)
        assert Path(f"/proc/{child}").exists()  # alive while its parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(child)
        assert said.read_text() == "parent gone\n"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
