"""``index --shard i/N`` and ``run_index(shard=..., barrier=...)``: embeddings and neighbours
built in slices by separate processes equal, byte for byte, what one process builds."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from retro_platform.cli import cli
from retro_platform.cli.common import open_experiment
from retro_platform.corpus.ingest import find_corpus_id, ingest
from retro_platform.embeddings.embed import embed_corpus
from retro_platform.errors import ConfigError, StoreError
from retro_platform.index.build import open_run_index
from retro_platform.neighbours.compute import compute_neighbours
from retro_platform.pipeline import IndexResult, Shard, ShardResult, finished_index, run_index
from retro_platform.pipeline.shard_wait import run_index_waiting
from retro_platform.store.locks import working_on_index
from retro_platform.store.models import BUILDING, READY, EmbeddingSet, StageShard
from retro_platform.store.shards import ShardsLeft, slice_bounds
from tests.pipeline.helpers import write_experiment, write_stdlib_corpus

ROOT = Path(__file__).resolve().parents[2]

#: Enough standard-library text for more than one hashing batch (4,096 chunks) of 8-byte
#: chunks, so that both of two shards embed and search rows of their own; in 4-byte chunks
#: (:data:`SMALL_CHUNKS`), more than two, so that the first shard's slice is two batches.
MODULES = (
    "bisect.py", "colorsys.py", "fnmatch.py", "keyword.py", "shlex.py", "glob.py", "stat.py",
)  # fmt: skip
RETRIEVAL = {"chunk_size": 8, "neighbours": 2, "validation_fraction": 0.1}
SMALL_CHUNKS = {**RETRIEVAL, "chunk_size": 4}

HANG_S = 300

#: Runs the CLI after making progress commit after every batch and SIGKILL the process right
#: after its first commit of rows that leave a slice unfinished: a kill midway, at a known row.
KILLED_MIDWAY = """
import os, signal, sys
from retro_platform.store import stages
stages.COMMIT_EVERY_S = 0.0
commit = stages.Progress._commit
def commit_then_die(self, done, status):
    commit(self, done, status)
    if status == stages.BUILDING and 0 < done < len(self.array):
        os.kill(os.getpid(), signal.SIGKILL)
stages.Progress._commit = commit_then_die
from retro_platform.cli import cli
cli(sys.argv[1:], prog_name="retro-platform")
"""


def experiment_at(
    folder: Path, corpus: Path, url: str | None = None, retrieval: dict = RETRIEVAL
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_experiment(folder, corpus, url, retrieval=retrieval)


def ingested_at(folder: Path, corpus: Path, url: str | None = None) -> Path:
    """An experiment in ``folder`` whose corpus is ingested (its store closed again)."""
    path = experiment_at(folder, corpus, url)
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    store.close()
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stdlib_corpus(tmp_path_factory.mktemp("corpus"), MODULES)


@pytest.fixture(scope="module")
def one_process(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """What one process stores: embeddings, neighbours, chunk ids, and its index's answers."""
    return indexed_in_one_process(tmp_path_factory.mktemp("one-process"), corpus, RETRIEVAL)


def indexed_in_one_process(folder: Path, corpus: Path, retrieval: dict) -> dict[str, np.ndarray]:
    path = experiment_at(folder, corpus, retrieval=retrieval)
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    result = run_index(experiment, store, progress=False, log=lambda _: None)
    return stored(experiment, result)


def stored(experiment, result: IndexResult) -> dict[str, np.ndarray]:
    vectors = np.array(result.embeddings.open())
    scores, ids = open_run_index(experiment, result.index).search(vectors[::97].copy(), 5)
    return {
        "vectors": vectors,
        "chunk_ids": np.array(result.embeddings.chunk_ids()),
        "neighbours": np.array(result.neighbours.open()),
        "index_file": np.frombuffer(result.index.path.read_bytes(), np.uint8),
        "scores": scores,
        "ids": ids,
    }


def assert_same(result: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name, array in expected.items():
        assert np.array_equal(result[name], array), name


def index_command(path: Path, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "retro_platform.cli",
        "index",
        str(path),
        "--no-progress",
        *options,
    ]


def shards_together(path: Path, shards: list[int]) -> list[subprocess.CompletedProcess]:
    """Run ``index --shard i/2`` for each of ``shards`` at the same time; their results."""
    processes = [
        subprocess.Popen(
            index_command(path, "--shard", f"{i}/2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in shards
    ]
    finished = []
    for process in processes:
        out, err = process.communicate(timeout=HANG_S)
        assert process.returncode == 0, err
        finished.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return finished


def finished_result(path: Path) -> tuple[dict[str, np.ndarray], object]:
    """The store's finished results (``run_index`` then does no work) and the store."""
    experiment, store = open_experiment(path)
    result = run_index(experiment, store, progress=False, log=lambda _: None)
    return stored(experiment, result), store


# --- the shard itself --------------------------------------------------------------------------


def test_shard_text_is_i_of_n() -> None:
    assert Shard.parse("1/2") == Shard(1, 2) and str(Shard(1, 2)) == "1/2"
    assert Shard.parse(" 0 / 1 ") == Shard(0, 1)
    for text in ("3/2", "0/0", "a/b", "1", "-1/2", "1/2/3", ""):
        with pytest.raises(ConfigError) as error:
            Shard.parse(text)
        assert "\n" not in str(error.value)
    assert [i for i in range(5) if Shard(1, 2).takes(i)] == [1, 3]


@pytest.mark.parametrize(
    ("total", "unit", "count"), [(10_000, 4096, 2), (4097, 4096, 2), (5, 4096, 3), (0, 32, 2)]
)
def test_slices_are_whole_batches_that_cover_every_row(total: int, unit: int, count: int) -> None:
    bounds = slice_bounds(total, unit, count)
    assert len(bounds) == count
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    for (_, stop), (start, _) in zip(bounds, bounds[1:], strict=False):
        assert stop == start
    assert all(start % unit == 0 or start == total for start, _ in bounds)


def test_bad_shard_text_is_one_line_and_exit_2(tmp_path: Path, corpus: Path) -> None:
    path = experiment_at(tmp_path, corpus)
    for text in ("3/2", "0/0", "a/b"):
        result = CliRunner().invoke(cli, ["index", str(path), "--shard", text])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
        assert "i/N" in result.output or "0 <= i < N" in result.output
    assert not (tmp_path / "store").exists()  # refused before the store was opened


def test_rebuild_flags_do_not_go_with_a_shard(tmp_path: Path, corpus: Path) -> None:
    path = experiment_at(tmp_path, corpus)
    result = CliRunner().invoke(cli, ["index", str(path), "--shard", "0/2", "--reembed"])
    assert result.exit_code == 2 and "do not go with --shard" in result.output


# --- the shards in turn, in one process -------------------------------------------------------


def test_shards_in_turn_equal_one_process(
    tmp_path: Path, corpus: Path, database_url: str, one_process: dict[str, np.ndarray]
) -> None:
    path = experiment_at(tmp_path, corpus, database_url)
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)

    def shard(i: int) -> IndexResult | ShardResult:
        return run_index(experiment, store, shard=Shard(i, 2), progress=False, log=lambda _: None)

    first = shard(1)
    assert isinstance(first, ShardResult) and first.neighbours is None
    assert first.summary("e.toml").startswith("embeddings 1: shard 1/2 done; 1 shard left (0/2)")
    second = shard(0)  # completes the embeddings: merges, builds the index, searches its half
    assert isinstance(second, ShardResult) and second.neighbours is not None
    assert second.summary("e.toml").startswith("neighbours 1: shard 0/2 done; 1 shard left (1/2)")
    last = shard(1)
    assert isinstance(last, IndexResult)
    assert_same(stored(experiment, last), one_process)
    assert shard(0) == last  # a finished set: nothing to do
    with store.session() as session:
        slices = session.scalars(select(StageShard)).all()
    assert len(slices) == 4 and {row.status for row in slices} == {READY}
    assert not list((tmp_path / "store").rglob("*.shard-*"))  # merged, then removed


def test_a_run_without_shard_finishes_the_slices_left(
    tmp_path: Path, corpus: Path, one_process: dict[str, np.ndarray]
) -> None:
    path = experiment_at(tmp_path, corpus)
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    run_index(experiment, store, shard=Shard(0, 2), progress=False, log=lambda _: None)
    messages: list[str] = []
    result = run_index(experiment, store, progress=False, log=messages.append)
    assert "this run builds those of them left: 1/2" in messages[0]
    assert_same(stored(experiment, result), one_process)


def test_slices_started_over_leave_no_lock_file_behind(tmp_path: Path, corpus: Path) -> None:
    """A slice's build lock file (SQLite) goes with the slice: merged, or dropped by
    --reembed / --recompute-neighbours (before, a dropped slice's file stayed for good)."""
    path = experiment_at(tmp_path, corpus)
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    run_index(experiment, store, shard=Shard(0, 2), progress=False, log=lambda _: None)
    locks = tmp_path / "store" / "locks"
    assert list(locks.glob("build-stage_shards-*.lock"))  # slice 0 was built under its lock
    run_index(experiment, store, reembed=True, progress=False, log=lambda _: None)
    assert not list(locks.glob("build-stage_shards-*.lock"))


# --- separate processes --------------------------------------------------------------------------


@pytest.mark.e2e
def test_two_shard_processes_equal_one_process(
    tmp_path: Path, corpus: Path, database_url: str, one_process: dict[str, np.ndarray]
) -> None:
    """The CLI's shards at the same time against one store (each process ~10-20 s to start on
    a busy 2-core machine, hence e2e)."""
    path = ingested_at(tmp_path, corpus, database_url)

    outputs = [result.stdout for result in shards_together(path, [0, 1])]
    # the shard that finished its embeddings first has its neighbours still to search
    waiting = [i for i, out in enumerate(outputs) if out.startswith("embeddings 1: shard")]
    assert len(waiting) == 1, outputs
    (again,) = shards_together(path, waiting)
    assert "k=2, exclusion same-document" in again.stdout, again.stdout

    result, store = finished_result(path)
    assert_same(result, one_process)
    assert not list((tmp_path / "store").rglob("*.shard-*"))


@pytest.mark.e2e
def test_ranks_with_a_barrier_equal_one_process(
    tmp_path: Path, corpus: Path, one_process: dict[str, np.ndarray]
) -> None:
    path = ingested_at(tmp_path, corpus)

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2, timeout=HANG_S)
    answers = context.Queue()
    ranks = [
        context.Process(target=index_as_rank, args=(path, rank, 2, barrier, answers))
        for rank in range(2)
    ]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(HANG_S)
        assert process.exitcode == 0
    first, second = answers.get(timeout=10), answers.get(timeout=10)
    assert first[1:4] == second[1:4]  # every rank returns the same finished records
    [logged] = [answer[4] for answer in (first, second) if answer[0] == 0]
    # the job split the sets itself: no line about "an earlier run"'s shards, left "none"
    assert logged and not any("an earlier run split them" in line for line in logged), logged

    result, _ = finished_result(path)
    assert_same(result, one_process)


def index_as_rank(path: Path, rank: int, world_size: int, barrier, answers) -> None:
    """One rank of a job: ``run_index`` with its shard and the job's barrier (spawned
    processes that each start Python and open the experiment: ~30 s here, hence e2e)."""
    experiment, store = open_experiment(path)
    logged: list[str] = []
    result = run_index(
        experiment,
        store,
        shard=Shard(rank, world_size),
        barrier=barrier.wait,
        progress=False,
        log=logged.append,
    )
    answers.put((rank, result.embeddings.id, result.index.id, result.neighbours.id, logged))


@pytest.mark.e2e
def test_a_killed_shard_resumes_its_own_slice_only(tmp_path: Path, corpus: Path) -> None:
    one_process = indexed_in_one_process(tmp_path / "one-process", corpus, SMALL_CHUNKS)
    path = experiment_at(tmp_path / "shards", corpus, retrieval=SMALL_CHUNKS)
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)

    killed_midway = [sys.executable, "-c", KILLED_MIDWAY, *index_command(path)[3:]]
    first = subprocess.run([*killed_midway, "--shard", "0/2"], capture_output=True, timeout=HANG_S)
    assert first.returncode == -9, first.stderr
    with store.session() as session:
        mine, other = session.scalars(select(StageShard).order_by(StageShard.shard)).all()
    assert (mine.status, other.status) == (BUILDING, BUILDING)
    assert 0 < mine.done < mine.count and other.done == 0  # killed midway through its slice

    # the same kill again would strike at once if the slice started over; it resumes past it
    again = subprocess.run(
        [*killed_midway, "--shard", "0/2"], capture_output=True, text=True, timeout=HANG_S
    )
    assert again.returncode == 0, again.stderr
    assert "embeddings 1: shard 0/2 done; 1 shard left (1/2)" in again.stdout
    with store.session() as session:
        mine, other = session.scalars(select(StageShard).order_by(StageShard.shard)).all()
    assert (mine.status, mine.done) == (READY, mine.count)
    assert (other.status, other.done) == (BUILDING, 0)  # left to its own shard
    assert not store.path(other.file).exists()

    last = subprocess.run(
        index_command(path, "--shard", "1/2"), capture_output=True, text=True, timeout=HANG_S
    )
    assert last.returncode == 0, last.stderr  # it merges, builds the index, searches its half
    assert "neighbours 1: shard 1/2 done; 1 shard left (0/2)" in last.stdout
    result, _ = finished_result(path)  # a run without --shard finishes what is left
    assert_same(result, one_process)


#: Runs the CLI with progress committed after every batch, and stops the process (SIGSTOP)
#: right after its first commit of rows that leave a slice unfinished: a process that holds a
#: slice's build lock midway, for as long as the test likes.
STOPPED_MIDWAY = """
import os, signal, sys
from retro_platform.store import stages
stages.COMMIT_EVERY_S = 0.0
commit = stages.Progress._commit
stopped = []
def commit_then_stop(self, done, status):
    commit(self, done, status)
    if not stopped and status == stages.BUILDING and 0 < done < len(self.array):
        stopped.append(done)
        os.kill(os.getpid(), signal.SIGSTOP)
stages.Progress._commit = commit_then_stop
from retro_platform.cli import cli
cli(sys.argv[1:], prog_name="retro-platform")
"""


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.parametrize(
    ("other", "then"),
    [(["--shard", "0/2"], "continued"), (["--shard", "0/2"], "killed"), ([], "killed")],
)
def test_a_slice_another_process_is_building_is_waited_for_not_built_twice(
    tmp_path: Path, corpus: Path, other: list[str], then: str
) -> None:
    """``index`` without ``--shard`` beside a shard that is midway through its slice (or
    beside another ``index`` midway through the embeddings): it says so and waits instead of
    writing the same file at once. If the other goes on, what it built is taken as it finished
    it; if it is killed, its rows are resumed."""
    one_process = indexed_in_one_process(tmp_path / "one-process", corpus, SMALL_CHUNKS)
    path = experiment_at(tmp_path / "shards", corpus, retrieval=SMALL_CHUNKS)
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    shard = subprocess.Popen(
        [sys.executable, "-c", STOPPED_MIDWAY, *index_command(path)[3:], *other],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    logs: list[str] = []
    results: dict[str, object] = {}

    def whole() -> None:
        results["whole"] = run_index(experiment, store, progress=False, log=logs.append)

    def until(condition, what: str) -> None:
        deadline = time.monotonic() + HANG_S
        while not condition():
            assert time.monotonic() < deadline and shard.poll() is None, (what, logs)
            time.sleep(0.02)

    thread = threading.Thread(target=whole)
    try:
        until(lambda: stopped(shard.pid), "the shard never stopped midway")
        table = StageShard if other else EmbeddingSet
        with store.session() as session:
            first = session.scalars(select(table).order_by(table.id)).first()
        assert 0 < first.done < first.count
        thread.start()
        what = "embeddings: slice 0/2" if other else "embeddings 1"
        waiting = f"{what} is being built by another process: waiting for it"
        until(lambda: waiting in logs or not thread.is_alive(), "no waiting line")
        assert waiting in logs, logs  # it did not go on and build the same rows beside it
        time.sleep(0.3)
        with store.session() as session:
            assert session.get(table, first.id).done == first.done  # nobody else wrote
        if then == "continued":
            os.kill(shard.pid, signal.SIGCONT)
            out, err = shard.communicate(timeout=HANG_S)
            assert shard.returncode == 0, err
            assert "embeddings 1: shard 0/2 done; 1 shard left (1/2)" in out, out
        else:
            os.kill(shard.pid, signal.SIGKILL)
            shard.wait(HANG_S)
        thread.join(HANG_S)
    finally:
        shard.kill()
        shard.wait(HANG_S)
        thread.join(HANG_S)
    assert isinstance(results.get("whole"), IndexResult), logs
    assert_same(stored(experiment, results["whole"]), one_process)


def test_a_shard_result_says_what_is_left(tmp_path: Path, corpus: Path) -> None:
    path = experiment_at(tmp_path, corpus)
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    result = run_index(experiment, store, shard=Shard(1, 3), progress=False, log=lambda _: None)
    assert isinstance(result, ShardResult)
    line = result.summary("exp.toml")
    assert line.startswith("embeddings 1: shard 1/3 done; 2 shards left (0/3, 2/3);")
    assert "retro-platform index exp.toml --shard 1/3" in line

    # another N takes over the stored slices by their number modulo N
    messages: list[str] = []
    result = run_index(experiment, store, shard=Shard(0, 2), progress=False, log=messages.append)
    assert "split them into 3 shards; shard 0/2 builds those of them left: 0/3, 2/3" in messages[0]
    assert not isinstance(result, ShardResult) or result.neighbours is not None


@pytest.mark.e2e
def test_minilm_shards_equal_one_process(tmp_path: Path) -> None:
    """The real embedding model: the shards embed the same 1,024-text calls as one process
    (same runtime options), so the vectors are the same bytes (~1 min on 2 cores)."""
    corpus = write_stdlib_corpus(tmp_path / "corpus", MODULES[:6])
    minilm = {"name": "sentence-transformers"}
    retrieval = {**RETRIEVAL, "chunk_size": 32}
    (tmp_path / "one").mkdir()
    (tmp_path / "sharded").mkdir()
    one = write_experiment(tmp_path / "one", corpus, retrieval=retrieval, embedder=minilm)
    experiment, store = open_experiment(one)
    ingest(experiment, store, progress=False)
    expected = stored(experiment, run_index(experiment, store, progress=False, log=print))
    assert 1024 < len(expected["vectors"]) < 2048  # two embedder calls: one per shard

    sharded = write_experiment(tmp_path / "sharded", corpus, retrieval=retrieval, embedder=minilm)
    experiment, store = open_experiment(sharded)
    ingest(experiment, store, progress=False)
    for i in (1, 0, 1):
        result = run_index(experiment, store, shard=Shard(i, 2), progress=False, log=print)
    assert isinstance(result, IndexResult)
    assert_same(stored(experiment, result), expected)


def test_a_set_started_in_one_process_is_not_taken_over_by_shards(
    tmp_path: Path, corpus: Path
) -> None:
    path = experiment_at(tmp_path, corpus)
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    full = run_index(experiment, store, progress=False, log=lambda _: None)
    with store.session() as session:  # the state a kill of a run without --shard leaves
        embedding_set = session.get(EmbeddingSet, full.embeddings.id)
        embedding_set.status, embedding_set.done = BUILDING, 4096
    with pytest.raises(StoreError) as error:
        run_index(experiment, store, shard=Shard(0, 2), progress=False, log=lambda _: None)
    assert str(error.value) == (
        f"embeddings 1 were started without --shard (4096 of {full.embeddings.count} chunks "
        f"done): finish them in one process with: retro-platform index {experiment.hint_file}"
    )


def test_shards_after_a_corpus_change_equal_one_process(tmp_path: Path) -> None:
    """A new corpus version derived from the previous one (vectors copied, neighbours kept)
    comes out the same whether its stages run in shards or in one process, and the lines that
    say how many were copied and kept count the whole set (not the merging shard's slices)."""
    results, counted = [], []
    for sharded in (False, True):
        corpus = write_stdlib_corpus(tmp_path / f"corpus-{sharded}", MODULES[:-1])
        path = experiment_at(tmp_path / f"store-{sharded}", corpus)
        experiment, store = open_experiment(path)
        ingest(experiment, store, progress=False)
        run_index(experiment, store, progress=False, log=lambda _: None)
        write_stdlib_corpus(corpus, MODULES[-1:])  # a new document: corpus version 2
        ingest(experiment, store, progress=False)
        messages: list[str] = []
        if sharded:
            for i in (1, 0, 1):
                result = run_index(
                    experiment, store, shard=Shard(i, 2), progress=False, log=messages.append
                )
        else:
            result = run_index(experiment, store, progress=False, log=messages.append)
        assert isinstance(result, IndexResult) and result.embeddings.id == 2
        assert any("copied from embeddings 1" in line for line in messages)
        results.append(stored(experiment, result))
        counted.append([line for line in messages if "copied" in line or "kept their" in line])
    assert_same(results[1], results[0])
    assert counted[1] == counted[0] and len(counted[0]) == 2


# --- shards that wait for each other (--wait) ----------------------------------------------------


def test_waiting_shards_both_end_with_the_finished_index(
    tmp_path: Path, corpus: Path, one_process: dict[str, np.ndarray]
) -> None:
    """Two shards started together with ``--wait`` (threads, each with its own store): neither
    exits early, both return the finished result, and it is the one-process result."""
    path = ingested_at(tmp_path, corpus)
    results: dict[int, object] = {}
    logs: dict[int, list[str]] = {0: [], 1: []}

    def shard(i: int) -> None:
        experiment, store = open_experiment(path)
        try:
            results[i] = run_index_waiting(
                experiment, store, Shard(i, 2), poll_s=0.05, timeout_s=HANG_S, progress=False,
                log=logs[i].append,
            )  # fmt: skip
        finally:
            store.close()

    threads = [threading.Thread(target=shard, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_S)
    assert all(isinstance(results.get(i), IndexResult) for i in (0, 1)), (results, logs)
    assert results[0] == results[1]
    waited = [line for lines in logs.values() for line in lines if "waiting for the" in line]
    assert waited, logs  # one of them finished a slice before the other and waited
    result, _ = finished_result(path)
    assert_same(result, one_process)


def test_a_waiting_shard_gives_up_after_its_timeout(tmp_path: Path, corpus: Path) -> None:
    path = ingested_at(tmp_path, corpus)
    result = CliRunner().invoke(
        cli, ["index", str(path), "--no-progress", "--shard", "1/2", "--wait",
              "--wait-timeout", "0.2"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "waiting for the index (the shard that completes the embeddings builds it)" in (
        result.output
    )
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: shard 1/2 gave up after waiting 0.2 s for the index")
    assert last.endswith(f"run: retro-platform index {path}")
    # what it built stays: shard 0 alone now completes the embeddings and builds the index
    experiment, store = open_experiment(path)
    first = run_index(experiment, store, shard=Shard(0, 2), progress=False, log=lambda _: None)
    assert isinstance(first, ShardResult) and first.neighbours is not None


def test_a_wait_that_nobody_works_towards_names_the_shards_to_start(
    tmp_path: Path, corpus: Path
) -> None:
    """Shard 0 was never started (or was stopped before finishing its slice): a waiting shard
    cannot do that share of the work, but once no process has been at work for a while it
    says which shard to start, once; while one is at work it says nothing."""
    path = ingested_at(tmp_path, corpus)
    experiment, store = open_experiment(path)
    corpus_id = find_corpus_id(experiment, store)

    def wait(seconds: float) -> list[str]:
        logs: list[str] = []
        with pytest.raises(StoreError, match="gave up after waiting"):
            run_index_waiting(
                experiment, store, Shard(1, 2), poll_s=0.02, timeout_s=seconds,
                hint_after_s=0.1, progress=False, log=logs.append,
            )  # fmt: skip
        return [line for line in logs if "no process is at work" in line]

    with working_on_index(store, corpus_id):  # a live process: shard 0 may be at it
        assert wait(0.5) == []
    assert wait(0.5) == [
        "shard 1/2: no process is at work on this corpus, and the embeddings of shard 0/2 are "
        f"unfinished: if one was stopped, start it again (retro-platform index {path} --shard "
        "0/2); this shard keeps waiting"
    ]


def test_wait_goes_with_a_shard(tmp_path: Path, corpus: Path) -> None:
    path = experiment_at(tmp_path, corpus)
    for options in (["--wait"], ["--shard", "0/2", "--wait-timeout", "5"]):
        result = CliRunner().invoke(cli, ["index", str(path), *options])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: --wait") and result.output.count("\n") == 1
    assert not (tmp_path / "store").exists()  # refused before the store was opened


@pytest.mark.e2e
def test_two_waiting_shard_processes_finish_the_index(
    tmp_path: Path, corpus: Path, database_url: str, one_process: dict[str, np.ndarray]
) -> None:
    """``index --shard i/2 --wait`` on two processes at once: one command each, both exit 0
    with the finished index's summary."""
    path = ingested_at(tmp_path, corpus, database_url)
    processes = [
        subprocess.Popen(
            index_command(path, "--shard", f"{i}/2", "--wait"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in (0, 1)
    ]
    for process in processes:
        out, err = process.communicate(timeout=HANG_S)
        assert process.returncode == 0, err
        assert "k=2, exclusion same-document" in out.splitlines()[-1], out
    result, _ = finished_result(path)
    assert_same(result, one_process)


# --- a waiting shard finishes what a stopped shard left ------------------------------------------


def test_a_waiting_shard_finishes_what_a_stopped_shard_left(
    tmp_path: Path, corpus: Path, database_url: str, one_process: dict[str, np.ndarray]
) -> None:
    """Shard 0 waits (a thread); shard 1 completes the embeddings, then the neighbours, each
    time stopping before its merge (the stages called with ``merge=False`` and no index-work
    lock: what a process killed there leaves). While a process holds the lock shard 0 does not
    touch the set; once none does, it merges and builds, and ends with the one-process result."""
    path = ingested_at(tmp_path, corpus, database_url)
    logs: list[str] = []
    results: dict[str, object] = {}

    def waiting_shard() -> None:
        experiment, store = open_experiment(path)
        try:
            results["shard 0"] = run_index_waiting(
                experiment, store, Shard(0, 2), poll_s=0.02, timeout_s=HANG_S, progress=False,
                log=logs.append,
            )  # fmt: skip
        finally:
            store.close()

    def until(condition) -> None:
        deadline = time.monotonic() + HANG_S
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert condition(), logs

    thread = threading.Thread(target=waiting_shard)
    thread.start()
    try:
        until(lambda: any("waiting for the index" in line for line in logs))
        experiment, store = open_experiment(path)
        corpus_id = find_corpus_id(experiment, store)
        with working_on_index(store, corpus_id):  # a live process: it is left alone
            left = embed_corpus(experiment, store, corpus_id, shard=Shard(1, 2), merge=False)
            assert isinstance(left, ShardsLeft) and left.left == ()
            time.sleep(0.3)  # many polls
            with store.session() as session:
                assert session.scalars(select(EmbeddingSet.status)).one() == BUILDING
            assert not any("this shard finishes it" in line for line in logs)
        until(lambda: any("waiting for the other shards' neighbours" in line for line in logs))
        index = finished_index(experiment, store)
        embeddings = embed_corpus(experiment, store, corpus_id)  # merged by shard 0
        retriever = open_run_index(experiment, index)
        left = compute_neighbours(
            experiment, store, corpus_id, embeddings, index, retriever, shard=Shard(1, 2),
            merge=False,
        )  # fmt: skip
        assert isinstance(left, ShardsLeft) and left.left == ()
        store.close()
    finally:
        thread.join(HANG_S)
    assert isinstance(results.get("shard 0"), IndexResult), logs
    finishing = [line for line in logs if "this shard finishes it" in line]
    assert len(finishing) == 2, logs  # the index, then the neighbours
    assert "no process is at work on the index" in finishing[0]
    result, _ = finished_result(path)
    assert_same(result, one_process)


#: Runs the CLI and SIGKILLs the process right after its slice completed a set (the embeddings
#: or the neighbours), before it merges them: the shard that should finish the set is gone.
KILLED_BEFORE_MERGE = """
import os, signal, sys
from retro_platform.store import shards
finish = shards.SliceProgress.finish
def finish_then_die(self, done):
    if finish(self, done):
        os.kill(os.getpid(), signal.SIGKILL)
    return False
shards.SliceProgress.finish = finish_then_die
from retro_platform.cli import cli
cli(sys.argv[1:], prog_name="retro-platform")
"""


@pytest.mark.e2e
def test_a_waiting_shard_process_finishes_after_the_last_shard_is_killed(
    tmp_path: Path, corpus: Path, database_url: str, one_process: dict[str, np.ndarray]
) -> None:
    """``index --shard 0/2 --wait`` waits; shard 1 is SIGKILLed right after completing the
    embeddings, and again, started anew, right after completing the neighbours, each time
    before its merge. Shard 0 finishes both sets and exits 0 with the one-process result."""
    path = ingested_at(tmp_path, corpus, database_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    waiting = subprocess.Popen(
        [*index_command(path, "--shard", "0/2", "--wait")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        lines = []
        for expected in ("waiting for the index", "waiting for the other shards' neighbours"):
            while not any(expected in line for line in lines):
                line = waiting.stdout.readline()
                assert line, "".join(lines)  # shard 0 ended early
                lines.append(line)
            killed = subprocess.run(
                [sys.executable, "-c", KILLED_BEFORE_MERGE, *index_command(path)[3:],
                 "--shard", "1/2"],
                capture_output=True, text=True, env=env, timeout=HANG_S,
            )  # fmt: skip
            assert killed.returncode == -signal.SIGKILL, killed.stderr
        out, _ = waiting.communicate(timeout=HANG_S)
    finally:
        waiting.kill()
    output = "".join(lines) + out
    assert waiting.returncode == 0, output
    assert output.count("this shard finishes it") == 2, output
    assert "k=2, exclusion same-document" in output.splitlines()[-1], output
    result, _ = finished_result(path)
    assert_same(result, one_process)
