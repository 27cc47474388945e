"""``retro-platform ingest``: idempotent, resumable, skips bad files, refuses empty corpora."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from retro_platform.cli import cli
from retro_platform.cli.common import open_experiment
from retro_platform.corpus.ingest import ingest
from retro_platform.errors import ConfigError, CorpusError
from retro_platform.pipeline import run_index
from retro_platform.store.models import Chunk, Corpus, Document
from tests.limits import HANG_S
from tests.pipeline.helpers import write_experiment


def stored(store) -> dict[str, list[str]]:
    """external_id -> its chunk texts in position order."""
    with store.session() as session:
        rows = session.execute(
            select(Document.external_id, Chunk.text).join(Chunk).order_by(Chunk.id)
        ).all()
    result: dict[str, list[str]] = {}
    for external_id, text in rows:
        result.setdefault(external_id, []).append(text)
    return result


def test_ingest_stores_every_document_as_chunks(experiment_file, corpus_dir: Path) -> None:
    experiment, store = open_experiment(experiment_file())
    report = ingest(experiment, store, progress=False)
    files = sorted(path.name for path in corpus_dir.glob("*.py"))
    assert report.added == len(files) and report.read == len(files)
    contents = stored(store)
    assert sorted(contents) == files
    for name, texts in contents.items():
        assert "".join(texts) == (corpus_dir / name).read_text(encoding="utf-8")
    with store.session() as session:
        sizes = session.scalars(select(Chunk.token_end - Chunk.token_start)).all()
    assert max(sizes) == 32 and report.chunks == len(sizes) == report.chunks_added


def test_second_ingest_does_nothing_and_changes_are_picked_up(experiment_file, corpus_dir) -> None:
    experiment, store = open_experiment(experiment_file())
    ingest(experiment, store, progress=False)
    with store.session() as session:
        version = session.scalar(select(Corpus.version))
        first_ids = session.scalars(select(Chunk.id).order_by(Chunk.id)).all()

    again = ingest(experiment, store, progress=False)
    assert (again.added, again.replaced, again.unchanged) == (0, 0, again.read)
    with store.session() as session:
        assert session.scalar(select(Corpus.version)) == version
        assert session.scalars(select(Chunk.id).order_by(Chunk.id)).all() == first_ids

    (corpus_dir / "keyword.py").write_text("print('changed')\n")
    (corpus_dir / "new.txt").write_text("a new document about retrieval\n")
    third = ingest(experiment, store, progress=False)
    assert (third.added, third.replaced) == (1, 1)
    contents = stored(store)
    assert contents["keyword.py"] == ["print('changed')\n"]
    assert "new.txt" in contents
    with store.session() as session:
        assert session.scalar(select(Corpus.version)) == version + 1


def test_a_document_changed_to_text_without_tokens_leaves_a_new_version(
    experiment_file, corpus_dir: Path
) -> None:
    """all-MiniLM-L6-v2's WordPiece drops control characters: a document whose new text is only
    those is skipped ("no tokens"), and its old version, deleted, makes a new corpus version,
    so that what was derived from the old one is not taken as current."""
    path = experiment_file(
        tokenizer={"name": "pretrained"}, embedder={"name": "hashing", "dimension": 32}
    )
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    run_index(experiment, store, progress=False, log=lambda _: None)
    with store.session() as session:
        version = session.scalar(select(Corpus.version))
    (corpus_dir / "keyword.py").write_text("\x00\x01\x02")
    report = ingest(experiment, store, progress=False)
    assert report.skipped["no tokens"] == 1 and report.replaced == 1
    assert "keyword.py" not in stored(store)
    with store.session() as session:
        assert session.scalar(select(Corpus.version)) == version + 1
    result = run_index(experiment, store, progress=False, log=lambda _: None)  # derived anew
    assert result.embeddings.count == sum(len(texts) for texts in stored(store).values())


def test_bad_files_are_skipped_and_counted(experiment_file, corpus_dir: Path) -> None:
    (corpus_dir / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (corpus_dir / "empty.txt").write_bytes(b"")
    (corpus_dir / "blank.txt").write_text("  \n\n")
    experiment, store = open_experiment(experiment_file())
    report = ingest(experiment, store, progress=False)
    assert report.skipped == {"not UTF-8": 1, "empty": 2}
    assert "latin1.txt: not UTF-8" in report.skipped_examples
    assert "latin1.txt" not in stored(store)
    assert "skipped" in report.summary() and "not UTF-8" in report.summary()


def test_an_empty_corpus_is_a_one_line_error(tmp_path: Path, database_url: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "nothing.txt").write_text("")
    path = write_experiment(tmp_path, empty, database_url)
    experiment, store = open_experiment(path)
    with pytest.raises(CorpusError, match="no usable documents"):
        ingest(experiment, store, progress=False)
    result = CliRunner().invoke(cli, ["ingest", str(path)])
    assert result.exit_code == 2
    # in a log, the progress lines of ingest come first; the error is one line
    *progress, error = result.stderr.splitlines()
    assert error.startswith("Error: ") and "no usable documents" in error
    assert all(line.startswith("ingest: ") for line in progress)


def test_a_corpus_path_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="nowhere"):
        experiment, store = open_experiment(path)
        ingest(experiment, store, progress=False)
    result = CliRunner().invoke(cli, ["ingest", str(path)])
    assert result.exit_code == 2 and "nowhere" in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_unknown_plugin_and_unknown_option_are_refused_before_any_work(tmp_path, corpus_dir):
    path = write_experiment(tmp_path, corpus_dir, retriever={"name": "faiss-flt"})
    result = CliRunner().invoke(cli, ["ingest", str(path)])
    assert result.exit_code == 2
    assert "unknown retriever 'faiss-flt'" in result.output and "faiss-flat" in result.output
    assert not (tmp_path / "store").exists()  # nothing was created

    path = write_experiment(tmp_path, corpus_dir, embedder={"name": "hashing", "dimensions": 8})
    result = CliRunner().invoke(cli, ["ingest", str(path)])
    assert result.exit_code == 2 and "'dimensions'" in result.output
    assert "did you mean 'dimension'" in result.output


def test_a_killed_ingest_resumes_to_the_same_result(tmp_path: Path) -> None:
    # many small documents, so the kill lands between committed batches
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(6000):
        (corpus / f"doc{i:05d}.txt").write_text(f"document {i}: " + "retrieval " * (i % 50 + 1))
    path = write_experiment(tmp_path, corpus)
    database = tmp_path / "store" / "retro.db"
    command = [sys.executable, "-m", "retro_platform.cli", "ingest", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    count = 0
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with sqlite3.connect(database, timeout=1) as connection:
                count = connection.execute("select count(*) from documents").fetchone()[0]
        except sqlite3.OperationalError:
            count = 0  # not created yet
        if count > 0:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"
    assert 0 < count < 6000

    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr
    experiment, store = open_experiment(path)
    contents = stored(store)
    assert len(contents) == 6000
    for i in (0, 2999, 5999):
        text = (corpus / f"doc{i:05d}.txt").read_text()
        assert "".join(contents[f"doc{i:05d}.txt"]) == text
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Document)) == 6000


def test_ingest_and_index_show_a_progress_bar_only_when_asked(tmp_path, corpus_dir) -> None:
    path = write_experiment(tmp_path, corpus_dir)
    quiet = CliRunner().invoke(cli, ["ingest", str(path), "--no-progress"])
    assert quiet.exit_code == 0, quiet.output
    assert "%|" not in quiet.output and "\r" not in quiet.output  # plain lines, no bar
    assert "ingest: 6/6 doc (100%) in " in quiet.stderr
    # a second ingest finds everything stored; the bar still counts the documents read
    shown = CliRunner().invoke(cli, ["ingest", str(path), "--progress"])
    assert shown.exit_code == 0 and "ingest" in shown.stderr and "%" in shown.stderr
    indexed = CliRunner().invoke(cli, ["index", str(path), "--no-progress"])
    assert indexed.exit_code == 0, indexed.output
    assert "%|" not in indexed.output


def test_a_document_over_the_size_limit_is_skipped_with_its_reason(
    experiment_file, corpus_dir: Path
) -> None:
    largest = max(path.stat().st_size for path in corpus_dir.iterdir())
    (corpus_dir / "huge.txt").write_text("x = 1\n" * (largest // 3))
    limit = largest + 1
    experiment, store = open_experiment(experiment_file(store={"max_document_bytes": limit}))
    report = ingest(experiment, store, progress=False)
    reason = f"larger than {limit / 1024:.3g} KiB ([store] max_document_bytes)"
    assert report.skipped == {reason: 1}
    assert f"huge.txt: {reason}" in report.skipped_examples
    assert "huge.txt" not in stored(store) and len(stored(store)) > 0
    assert reason in report.summary()


@pytest.mark.slow
def test_one_large_document_ingests_in_memory_bounded_by_its_size(tmp_path: Path) -> None:
    # measured on a 30 MiB document (bytes tokenizer, 983 040 chunks): the peak grew by 2.8 GB
    # (89x) when every chunk row was held at once, 0.66 GB (21x) with the rows in slices; what
    # is left is the tokenizer's arrays (12 bytes a token, 20 while it works)
    script = Path(__file__).parent / "ingest_memory.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "3"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    measured = json.loads(done.stdout.splitlines()[-1])
    assert measured["chunks"] > 90_000
    assert measured["growth_bytes"] < 30 * measured["file_bytes"], measured
