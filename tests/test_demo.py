"""The stand-in main job runs for real on the standard library, through the CLI."""

from __future__ import annotations

import math

from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.demo import build_corpus, run_demo, stdlib_files


def test_neighbours_come_from_other_files_and_carry_their_continuation():
    corpus = build_corpus(stdlib_files(4, seed=0), m=64, k=2)
    chunks, m = corpus.tokens.shape
    assert corpus.neighbours.shape == (chunks, 2, 2 * m)
    # find each neighbour's own chunk index by matching its first half against all chunks
    index = {tuple(row.tolist()): i for i, row in enumerate(corpus.tokens)}
    for query in range(0, chunks, max(1, chunks // 50)):
        for neighbour in corpus.neighbours[query]:
            source = index[tuple(neighbour[:m].tolist())]
            assert corpus.documents[source] != corpus.documents[query]
            if source + 1 < chunks and corpus.documents[source + 1] == corpus.documents[source]:
                assert neighbour[m:].tolist() == corpus.tokens[source + 1].tolist()
            else:
                assert (neighbour[m:] == 0).all()


def test_demo_trains_and_reports_retrieval_on_and_off():
    lines: list[str] = []
    result = run_demo(files=3, steps=2, seed=0, echo=lines.append)
    assert all(math.isfinite(result[key]) for key in result)
    assert "retrieval on" in lines[-1]


def test_demo_command_rejects_bad_options_with_exit_code_2():
    outcome = CliRunner().invoke(cli, ["demo", "--steps", "0"])
    assert outcome.exit_code == 2
    assert outcome.output.strip().startswith("Error: demo needs")


def test_every_command_is_reachable_through_python_dash_m():
    # `python -m retro_platform.cli` must see commands defined anywhere in the module
    from tests.test_cli_plugins import run_cli

    outcome = run_cli("demo", "--steps", "0")
    assert outcome.returncode == 2
    assert (
        outcome.stderr.strip()
        == "Error: demo needs --files of at least 2 and --steps of at least 1"
    )
