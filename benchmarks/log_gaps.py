"""The longest silence in a run's log: run an experiment with its output sent to a file (not
a terminal), stamp every line as it arrives, and report the longest gap between two lines.

    python benchmarks/log_gaps.py [EXPERIMENT.toml] [--target 60] [--log FILE] [-- RUN ARGS]

Target: under 60 s (every long stage prints a line at least every 30 s in a log; see
docs/runs.md, "Progress in a log"). Exits 1 when the longest gap is over the target.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default=str(ROOT / "examples/quickstart.toml"))
    parser.add_argument("--target", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--log", default="log_gaps.log", help="where the stamped log goes")
    argv = sys.argv[1:]
    run_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    command = [sys.executable, "-m", "retro_platform.cli", "run", args.experiment]
    command += run_args
    started = time.monotonic()
    stamps: list[tuple[float, str]] = []
    # stdout and stderr both into one pipe: the child sees no terminal, as with `> file 2>&1`
    with (
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as child,
        open(args.log, "w") as log,
    ):
        assert child.stdout is not None
        for line in child.stdout:
            at = time.monotonic() - started
            stamps.append((at, line.rstrip("\n")))
            log.write(f"{at:8.1f}  {line}")
            log.flush()
    end = time.monotonic() - started
    if child.returncode != 0:
        print(f"the run failed (exit {child.returncode}); its log: {args.log}", file=sys.stderr)
        return 2

    times = [0.0] + [at for at, _ in stamps] + [end]
    gaps = [(times[i + 1] - times[i], i) for i in range(len(times) - 1)]
    gap, where = max(gaps)
    before = stamps[where - 1][1] if where > 0 else "(start)"
    after = stamps[where][1] if where < len(stamps) else "(end)"
    print(f"{len(stamps)} lines in {end:.1f} s; longest gap {gap:.1f} s")
    print(f"  after  [{times[where]:8.1f}] {before}")
    print(f"  before [{times[where + 1]:8.1f}] {after}")
    print(f"stamped log: {args.log}")
    ok = gap <= args.target
    print(f"target {args.target:.0f} s: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
