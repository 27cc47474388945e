"""How every long stage shows its progress: one rule, one place.

On a terminal a stage draws a tqdm bar. In a log (stderr not a terminal: output sent to a
file, a pipe, a CI job) it prints plain lines instead, each a whole line ending in a newline:
one when it starts, then at most one every :data:`DEFAULT_EVERY` seconds while it moves, and
one when it ends::

    embed: 0/48213 chunk (0%)
    embed: 9984/48213 chunk (21%), 332 chunk/s, eta 1:55
    embed: 48213/48213 chunk (100%) in 2:25, 332 chunk/s

``RETRO_PLATFORM_PROGRESS_EVERY`` (seconds) changes that interval (the tests set it low). The
CLI's ``--progress`` asks for bars even in a log and ``--no-progress`` for lines even on a
terminal; every stage takes that choice as ``enabled`` (None: decide by the terminal). A
plugin's own bars (a retriever adding vectors) are not handed it: the core runs the plugin's
call inside :func:`chosen`, and a bar made there with ``enabled=None`` follows the choice.

Why not tqdm alone: written to a file, tqdm redraws its bar with carriage returns, so a log
gets one ever-growing line of bars and no newline until the stage ends. The plain lines are
still tqdm (its counting, rate and ``mininterval``), with only the drawing replaced.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm import tqdm

#: The environment variable that sets the seconds between progress lines in a log.
EVERY_VARIABLE = "RETRO_PLATFORM_PROGRESS_EVERY"

#: Seconds between progress lines in a log, unless the environment variable says otherwise.
DEFAULT_EVERY = 30.0

#: The choice :func:`chosen` set for the calls inside it (None: decide by the terminal).
_CHOICE: ContextVar[bool | None] = ContextVar("progress_choice", default=None)


def use_bar(enabled: bool | None = None) -> bool:
    """Whether to draw a bar (True) or print plain lines (False): ``enabled`` when given, else
    the choice of an enclosing :func:`chosen`, else whether stderr is a terminal."""
    if enabled is None:
        enabled = _CHOICE.get()
    if enabled is not None:
        return enabled
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def chosen(enabled: bool | None) -> Iterator[None]:
    """Inside the block, bars made without a choice of their own (``enabled=None``) follow
    ``enabled``: how a stage passes ``--progress``/``--no-progress`` on to a plugin's bars."""
    token = _CHOICE.set(enabled)
    try:
        yield
    finally:
        _CHOICE.reset(token)


def every() -> float:
    """Seconds between progress lines in a log (``RETRO_PLATFORM_PROGRESS_EVERY``, else 30)."""
    value = os.environ.get(EVERY_VARIABLE, "")
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_EVERY
    return seconds if seconds > 0 else DEFAULT_EVERY


def progress(
    *,
    desc: str,
    unit: str = "it",
    total: int | None = None,
    initial: int = 0,
    enabled: bool | None = None,
) -> tqdm:
    """A progress bar for a stage: a tqdm bar on a terminal, :class:`LogLines` in a log (see
    the module docstring). Use it as tqdm: ``update``, ``set_postfix``, ``close`` or ``with``;
    :meth:`LogLines.note` (or :func:`note`) prints a line of the stage's own."""
    if use_bar(enabled):
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr)
    return LogLines(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        mininterval=every(),
        miniters=1,  # no adaptive skipping: the clock alone decides
        leave=False,  # close() prints the last line itself and erases nothing
    )


@contextmanager
def heartbeat(desc: str, enabled: bool | None = None) -> Iterator[None]:
    """Around one long call that reports nothing itself (a Faiss ``train``): in a log, a line
    ``desc: still running, 1:30 elapsed`` every interval until it returns, from a thread (the
    libraries such calls spend their time in release the GIL). Nothing on a terminal, where
    the silence is visible anyway and a line would break the bars."""
    if use_bar(enabled):
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not done.wait(every()):
            elapsed = tqdm.format_interval(time.monotonic() - started)
            sys.stderr.write(f"{desc}: still running, {elapsed} elapsed\n")
            sys.stderr.flush()

    thread = threading.Thread(target=beat, name=f"heartbeat: {desc}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def note(bar: tqdm, line: str) -> None:
    """Print ``line`` beside ``bar``: above a terminal bar, or as a log line that also counts
    as the stage's progress line (the next one comes an interval later)."""
    if isinstance(bar, LogLines):
        bar.note(line)
    else:
        bar.write(line, file=sys.stderr)


class LogLines(tqdm):
    """tqdm that prints whole lines (``desc: n/total unit (x%), rate, eta``) instead of
    redrawing a bar; ``mininterval`` is the time between lines."""

    monitor_interval = 0  # no monitor thread: it only adjusts miniters, which is fixed at 1

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm erasing the bar (close, clear): a log keeps its lines
            return False
        self._print(self.line())
        return True

    def clear(self, nolock: bool = False) -> None:
        """Nothing to erase in a log."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown in the next line

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)

    def note(self, line: str) -> None:
        """Print ``line``; it counts as a progress line, so the next comes an interval later."""
        self._print(line)
        if not self.disable:
            self.last_print_n = self.n
            self.last_print_t = self._time()

    def close(self) -> None:
        if not self.disable and hasattr(self, "last_print_t"):
            self._print(self.line(final=True))
        super().close()

    def line(self, final: bool = False) -> str:
        """The progress line as it stands (``final``: with the elapsed time, not the eta)."""
        d = self.format_dict
        n, total, elapsed, unit = d["n"], d["total"], d["elapsed"], d["unit"]
        text = f"{d['prefix']}: {n}/{total} {unit}" if total else f"{d['prefix']}: {n} {unit}"
        if total:
            text += f" ({100 * n / total:.0f}%)"
        done = n - d["initial"]
        if final:
            rate = done / elapsed if elapsed > 0 else None
            text += f" in {self.format_interval(elapsed)}"
        else:
            rate = d["rate"] or (done / elapsed if elapsed > 0 and done else None)
        if rate:
            text += f", {_rate(rate, unit)}"
            if not final and total and n < total:
                text += f", eta {self.format_interval((total - n) / rate)}"
        if d["postfix"]:
            text += f", {d['postfix']}"
        return text

    def _print(self, line: str) -> None:
        self.fp.write(line + "\n")
        self.fp.flush()


def _rate(rate: float, unit: str) -> str:
    if rate >= 1:
        return f"{rate:,.3g} {unit}/s" if rate < 100 else f"{rate:,.0f} {unit}/s"
    return f"{1 / rate:,.3g} s/{unit}"
