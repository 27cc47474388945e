"""The README's promises that can be checked without a fresh machine."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci_command in (ROOT / "README.md").read_text()


def test_readme_shows_the_seed_snippet_unchanged_but_for_the_import():
    from tests.model.test_seed_snippet import SEED_SNIPPET

    readme = (ROOT / "README.md").read_text()
    body = SEED_SNIPPET.replace("from retro_platform import RETRO\n", "").strip()
    assert "from retro_platform import RETRO" in readme
    for line in body.splitlines():
        assert line in readme, line
