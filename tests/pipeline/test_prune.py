"""``store prune``: the records and files of earlier corpus versions go, except the newest
one an update of the current version still derives from; the current version is untouched."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from retro_platform.cli import cli
from retro_platform.cli.common import open_experiment
from retro_platform.corpus.ingest import find_corpus_id, ingest
from retro_platform.index.build import open_index
from retro_platform.pipeline import run_index
from retro_platform.pipeline.check import check_store
from retro_platform.pipeline.prune import REMOVING, prune
from retro_platform.store.locks import reading_index, working_on_index
from retro_platform.store.models import EmbeddingSet, NeighbourSet, VectorIndex


def add_module(corpus_dir: Path, name: str) -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    shutil.copy(root / name, corpus_dir / name)


def index_quietly(experiment, store):
    return run_index(experiment, store, progress=False, log=lambda _: None)


def files_of(result) -> list[Path]:
    return [
        result.embeddings.path,
        result.embeddings.ids_path,
        result.index.path,
        result.neighbours.path,
    ]


def arrays(result) -> list[np.ndarray]:
    return [
        np.array(result.embeddings.open()),
        np.array(result.neighbours.open()),
        np.frombuffer(result.index.path.read_bytes(), np.uint8),
    ]


def counts(store) -> tuple[int, int, int]:
    with store.session() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(model))
            for model in (EmbeddingSet, VectorIndex, NeighbourSet)
        )


def indexed_twice(path: Path, corpus_dir: Path):
    """The experiment at ``path`` ingested and indexed, then again once heapq.py was added:
    ``(experiment, store, the first version's result, the second's)``."""
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    first = index_quietly(experiment, store)
    add_module(corpus_dir, "heapq.py")
    ingest(experiment, store, progress=False)
    return experiment, store, first, index_quietly(experiment, store)


def test_earlier_versions_go_but_the_base_of_the_next_update_stays(
    experiment_file, corpus_dir: Path
) -> None:
    experiment, store = open_experiment(experiment_file())
    ingest(experiment, store, progress=False)
    first = index_quietly(experiment, store)
    add_module(corpus_dir, "heapq.py")
    ingest(experiment, store, progress=False)

    # version 2 is not indexed yet: version 1 is what its index derives from
    plan = prune(store)
    assert plan.removed == [] and len(plan.kept) == 3, plan
    assert all(path.exists() for path in files_of(first))

    second = index_quietly(experiment, store)
    before = arrays(second)
    add_module(corpus_dir, "stat.py")
    ingest(experiment, store, progress=False)  # version 3, not indexed: version 2 is its base

    plan = prune(store, dry_run=True)
    assert [record.what for record in plan.removed] == [
        f"neighbours {first.neighbours.id}",
        f"index {first.index.id}",
        f"embeddings {first.embeddings.id}",
    ]
    assert plan.bytes == sum(path.stat().st_size for path in files_of(first))
    assert all(path.exists() for path in files_of(first))  # a dry run removes nothing
    assert counts(store) == (2, 2, 2)

    plan = prune(store)
    assert len(plan.removed) == 3
    assert not any(path.exists() for path in files_of(first))
    assert all(path.exists() for path in files_of(second))
    assert counts(store) == (1, 1, 1)
    assert all(np.array_equal(a, b) for a, b in zip(arrays(second), before, strict=True))
    assert check_store(store).ok

    log: list[str] = []
    third = run_index(experiment, store, progress=False, log=log.append)
    assert any(f"copied from embeddings {second.embeddings.id}" in line for line in log), log
    assert any("no rebuild" in line for line in log), log  # updated from version 2's index
    prune(store)
    assert counts(store) == (1, 1, 1)  # version 2's records went once version 3 was indexed
    assert all(path.exists() for path in files_of(third))


@pytest.mark.parametrize(
    "retriever",
    [
        {"name": "faiss-ivf-ondisk", "nprobe": 4096, "shards": 2},
        {"name": "faiss-ivfpq", "nlist": 4, "nbits": 6},
        {"name": "faiss-hnsw"},
    ],
    ids=lambda table: table["name"],
)
def test_an_updated_index_needs_nothing_of_the_version_it_came_from(
    experiment_file, corpus_dir: Path, retriever: dict
) -> None:
    """An update loads the earlier index and saves a new one (for the on-disk index, a folder
    of inverted lists of its own): once the earlier version is pruned the new index still
    loads, answers as before and holds exactly the database's chunks."""
    experiment, store, _, second = indexed_twice(experiment_file(retriever=retriever), corpus_dir)
    queries = np.array(second.embeddings.open()[::50])
    before = open_index(second.index).search(queries, 4)
    assert len(prune(store).removed) == 3
    after = open_index(second.index).search(queries, 4)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    report = check_store(store)
    assert report.ok, report.problems


def test_a_corpus_being_indexed_is_left_alone(experiment_file, corpus_dir: Path) -> None:
    experiment, store, _, _ = indexed_twice(experiment_file(), corpus_dir)
    corpus_id = find_corpus_id(experiment, store)
    with working_on_index(store, corpus_id):
        plan = prune(store)
    assert (plan.removed, plan.busy) == ([], [corpus_id])
    assert counts(store) == (2, 2, 2)
    assert len(prune(store).removed) == 3  # once nobody is at work


def test_a_corpus_a_training_run_reads_is_left_alone(experiment_file, corpus_dir: Path) -> None:
    """A run reads its index again after training (evaluation, samples): while one holds the
    corpus's index-read lock, prune leaves the corpus and says why."""
    experiment, store, _, _ = indexed_twice(experiment_file(), corpus_dir)
    corpus_id = find_corpus_id(experiment, store)
    with reading_index(store, corpus_id):
        plan = prune(store)
    assert (plan.removed, plan.busy, plan.in_use) == ([], [], [corpus_id])
    assert counts(store) == (2, 2, 2)
    assert len(prune(store).removed) == 3  # once the run is done


def test_a_prune_killed_midway_finishes_on_its_next_run(experiment_file, corpus_dir: Path) -> None:
    """The state a kill leaves after the records were marked and some files removed: no stage
    uses a record marked removing, and the next prune removes the rest."""
    experiment, store, first, _ = indexed_twice(experiment_file(), corpus_dir)
    with store.session() as session:
        for model, row_id in (
            (EmbeddingSet, first.embeddings.id),
            (VectorIndex, first.index.id),
            (NeighbourSet, first.neighbours.id),
        ):
            session.get(model, row_id).status = REMOVING
    first.index.path.unlink()
    plan = prune(store)
    assert len(plan.removed) == 3 and first.index.path not in plan.removed[1].files
    assert not any(path.exists() for path in files_of(first))
    assert counts(store) == (1, 1, 1)


def test_the_command_lists_what_goes_and_what_it_frees(experiment_file, corpus_dir: Path) -> None:
    path = experiment_file()
    experiment, store, first, _ = indexed_twice(path, corpus_dir)
    runner = CliRunner()

    dry = runner.invoke(cli, ["store", "prune", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"embeddings {first.embeddings.id}" in dry.output
    assert (
        dry.output.strip()
        .splitlines()[-1]
        .startswith("3 records of earlier corpus versions would be removed; would free ")
    )
    assert counts(store) == (2, 2, 2)

    done = runner.invoke(cli, ["store", "prune", str(path), "--json"])
    assert done.exit_code == 0, done.output
    record = json.loads(done.output)
    assert [item["record"] for item in record["removed"]][2] == f"embeddings {first.embeddings.id}"
    assert record["bytes"] == sum(item["bytes"] for item in record["removed"]) > 0
    assert counts(store) == (1, 1, 1)

    again = runner.invoke(cli, ["store", "prune", str(path)])
    assert again.exit_code == 0, again.output
    assert again.output == "0 records of earlier corpus versions removed; freed 0 B\n"


def test_a_store_not_made_yet_is_not_created(tmp_path: Path, corpus_dir: Path) -> None:
    from tests.pipeline.helpers import write_experiment

    path = write_experiment(tmp_path, corpus_dir)
    result = CliRunner().invoke(cli, ["store", "prune", str(path)])
    assert result.exit_code == 2, result.output
    assert "not ingested yet" in result.output
    assert not (tmp_path / "store").exists()


def test_stats_and_prune_need_none_of_the_experiment_s_plugins(
    experiment_file, corpus_dir: Path
) -> None:
    """They read the store alone: after the experiment's embedder was uninstalled (here: the
    file names one that no distribution registers) they still work."""
    path = experiment_file()
    experiment, store, _, _ = indexed_twice(path, corpus_dir)
    path.write_text(path.read_text().replace('name = "hashing"', 'name = "gone-embedder"'))
    runner = CliRunner()
    stats = runner.invoke(cli, ["store", "stats", str(path), "--json"])
    assert stats.exit_code == 0, stats.output
    assert [row["embedder"] for row in json.loads(stats.output)["embedding_sets"]] == [
        "hashing",
        "hashing",
    ]
    pruned = runner.invoke(cli, ["store", "prune", str(path)])
    assert pruned.exit_code == 0, pruned.output
    assert counts(store) == (1, 1, 1)
    search = runner.invoke(cli, ["search", str(path), "heap"])  # it does need the embedder
    assert search.exit_code == 2 and "gone-embedder" in search.output


def test_the_slices_of_a_pruned_set_leave_no_lock_file_behind(
    experiment_file, corpus_dir: Path
) -> None:
    """An earlier version's set left half built by shards goes with its slices, and the
    slices' build lock files (SQLite) with them: before, they stayed for good."""
    from retro_platform.pipeline import Shard

    experiment, store = open_experiment(experiment_file())
    ingest(experiment, store, progress=False)
    run_index(experiment, store, shard=Shard(0, 2), progress=False, log=lambda _: None)
    add_module(corpus_dir, "heapq.py")
    ingest(experiment, store, progress=False)
    index_quietly(experiment, store)
    assert [record.what for record in prune(store).removed] == ["embeddings 1"]
    if store.engine.dialect.name == "sqlite":
        assert not list(store.path("locks").glob("build-stage_shards-*.lock"))
