"""Ending a process whose parent died: a watchdog thread that notices the parent change.

A child started in a session of its own gets no signal when its parent is killed outright
(SIGKILL, the OOM killer): ``torchrun`` starts its training processes that way, and the
embedder starts its worker processes from threads, where ``PR_SET_PDEATHSIG`` would fire when
the starting thread ends, not the process. Polling ``getppid`` once a second works for both:
a dead parent's children are handed to another process (init, or a subreaper).
"""

from __future__ import annotations

import os
import sys
import threading
import time


def exit_with_parent(code: int = 0, message: str | None = None) -> None:
    """End this process with ``code`` within a second of its parent's death, after printing
    ``message`` (if any) on stderr."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        if message is not None:
            print(message, file=sys.stderr, flush=True)
        os._exit(code)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
