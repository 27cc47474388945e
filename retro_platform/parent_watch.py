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

#: The parent watched, and how to end when it is gone (set by :func:`exit_with_parent`).
_parent: int | None = None
_code = 0
_message: str | None = None
_ending = threading.Lock()


def exit_with_parent(code: int = 0, message: str | None = None) -> None:
    """End this process with ``code`` within a second of its parent's death, after printing
    ``message`` (if any) on stderr."""
    global _parent, _code, _message
    parent = _parent = os.getppid()
    _code, _message = code, message

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        _end()

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def exit_if_parent_gone() -> None:
    """End this process now, as the watchdog would, if the parent it watches is gone: for an
    error that the death caused before the watchdog saw it (a collective whose peer process
    has already stopped), which would otherwise end in a traceback."""
    if _parent is not None and os.getppid() != _parent:
        _end()


def _end() -> None:
    with _ending:  # one message, from whichever thread comes first; the other never returns
        if _message is not None:
            print(_message, file=sys.stderr, flush=True)
        os._exit(_code)
