"""``torchrun`` for ``retro-platform run --nproc N``: one line, and the right exit code, when a
process fails.

``python -m retro_platform.training.launch TORCHRUN-ARGS...`` runs torchrun's own
``torch.distributed.run.run`` with those arguments, with two differences:

- Each process that stops on a :class:`~retro_platform.errors.RetroPlatformError` prints its
  one ``Error:`` line and records it (:func:`record_failure`, in the folder named by
  :data:`FAILURES`); a process whose collective then breaks because that process left stops
  quietly (:func:`another_failed`). This launcher then exits with the recorded exit code (2)
  and adds nothing: the one line above is the whole story, as in one process.
- Any other failure (a traceback, a process killed) ends in one line naming the process and
  how it ended, exit code 1, instead of torchrun's ``ChildFailedError`` traceback and table.

Plain ``torchrun ... -m retro_platform run`` is torchrun's as it is.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The environment variable naming the folder where processes record a failure.
FAILURES = "RETRO_PLATFORM_FAILURES"

RESUME = (
    "run the same command again: a run resumes from its last checkpoint and what the "
    "retrieval stages stored is kept"
)


def record_failure(code: int, message: str, environ: Mapping[str, str] | None = None) -> None:
    """Record that this process stops with ``message`` and exit code ``code`` (under the
    launcher only: nothing without :data:`FAILURES`)."""
    environ = os.environ if environ is None else environ
    folder = environ.get(FAILURES)
    if not folder:
        return
    rank = environ.get("RANK", "0")
    path = Path(folder) / f"rank-{rank}.json"
    temporary = path.with_suffix(".partial")
    try:
        temporary.write_text(json.dumps({"rank": int(rank), "code": code, "message": message}))
        os.replace(temporary, path)
    except OSError:  # the record only shortens the report: never fail for it
        pass


def recorded_failures(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """The failures that processes recorded, by rank."""
    folder = folder if folder is not None else os.environ.get(FAILURES)
    if not folder:
        return []
    found = []
    for path in sorted(Path(folder).glob("rank-*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda record: record["rank"])


def another_failed(rank: int) -> bool:
    """Whether a process other than ``rank`` recorded a failure (its line is printed)."""
    return any(record["rank"] != rank for record in recorded_failures())


def _ended(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"failed with exit code {exitcode}"


def exit_code_and_message(
    failures: Mapping[int, int], recorded: list[dict[str, Any]], world_size: int
) -> tuple[int, str | None]:
    """What the launcher exits with, and the line it prints (None: a process printed it).

    ``failures`` maps each failed rank to its exit code (negative: killed by that signal) as
    torchrun saw them; ``recorded`` is :func:`recorded_failures`.
    """
    if recorded:
        return int(recorded[0]["code"]), None
    # torchrun stops the others with SIGTERM once one fails: the one that did not get it is the
    # cause (timestamps are whole seconds, so they do not tell)
    causes = {rank: code for rank, code in failures.items() if code != -signal.SIGTERM}
    rank, code = min((causes or failures).items())
    return 1, (
        f"process {rank} of {world_size} {_ended(code)} and torchrun stopped the others "
        f"(what it printed is above); {RESUME}"
    )


def _world_size(args: Any) -> int:
    try:  # --nnodes is N or MIN:MAX
        return int(str(args.nnodes).split(":")[-1]) * int(args.nproc_per_node)
    except (TypeError, ValueError):
        return 0


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="retro-platform-failures-") as folder:
        os.environ[FAILURES] = folder  # the processes inherit it
        try:
            run(args)
        except ChildFailedError as failed:
            failures = {rank: f.exitcode for rank, f in failed.failures.items()}
            code, message = exit_code_and_message(
                failures, recorded_failures(folder), _world_size(args)
            )
            if message is not None:
                print(f"Error: {message}", file=sys.stderr, flush=True)
            sys.exit(code)
        except SignalException as stopped:  # torchrun stopped its processes first
            name = signal.Signals(stopped.sigval).name
            print(f"Error: stopped by {name}; {RESUME}", file=sys.stderr, flush=True)
            sys.exit(128 + int(stopped.sigval))


if __name__ == "__main__":
    main()
