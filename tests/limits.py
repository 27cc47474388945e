"""How long a test waits for a subprocess before calling it hung.

Tests never measure speed: a subprocess that does real work (a benchmark in quick mode, a pip
install, a run) can take ten times longer when the cores are shared with other jobs, and a
test must not fail for that. Its timeout only guards against a hang, so it is far above any
honest duration: an hour, well inside CI's limit.
"""

#: Seconds before a subprocess that does real work is considered hung.
HANG_S = 3600
