"""``[sweep]``: the grid's points, in order, each a fully validated experiment."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from retro_platform.config import load_experiment
from retro_platform.config.resolved import flatten_config, resolved_config
from retro_platform.config.sweep import SweepPoint, sweep_points


def test_no_sweep_is_one_point_with_no_values(write_file: Callable[..., Path]) -> None:
    experiment = load_experiment(write_file())
    [point] = sweep_points(experiment)
    assert point == SweepPoint(0, {}, experiment)
    assert point.experiment is experiment and point.label == ""


def test_points_are_the_product_in_file_order(write_file: Callable[..., Path]) -> None:
    path = write_file(
        "[sweep]\n"
        'retriever.name = ["faiss-flat", "faiss-hnsw"]\n'
        '"train.lr" = [1e-3, 1e-4, 3e-4]\n'
        "model.positional_encoding_options.theta = [100.0]\n"
    )
    experiment = load_experiment(path)
    points = sweep_points(experiment)
    assert [point.index for point in points] == list(range(6))
    assert [tuple(point.values.values()) for point in points] == [
        ("faiss-flat", 1e-3, 100.0),
        ("faiss-flat", 1e-4, 100.0),
        ("faiss-flat", 3e-4, 100.0),
        ("faiss-hnsw", 1e-3, 100.0),
        ("faiss-hnsw", 1e-4, 100.0),
        ("faiss-hnsw", 3e-4, 100.0),
    ]
    assert list(points[0].values) == [
        "retriever.name",
        "train.lr",
        "model.positional_encoding_options.theta",
    ]
    last = points[-1]
    assert last.label == (
        "retriever.name=faiss-hnsw, train.lr=0.0003, model.positional_encoding_options.theta=100"
    )
    assert last.experiment.retriever == {"name": "faiss-hnsw"}
    assert last.experiment.train.lr == 3e-4
    assert last.experiment.model.positional_encoding_options == {"theta": 100.0}
    assert last.experiment.sweep.grid == {}
    # everything not swept is the file's, paths and all
    assert last.experiment.train.steps == 10 and last.experiment.retrieval.chunk_size == 32
    assert last.experiment.store.path == experiment.store.path
    assert last.experiment.source == path and last.experiment.base_dir == experiment.base_dir
    assert experiment.retriever == {"name": "faiss-flat"}  # the file's experiment is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        last.index = 3  # type: ignore[misc]


def test_a_point_is_the_same_experiment_as_the_file_with_its_values_set(
    write_file: Callable[..., Path],
) -> None:
    # what makes a sweep's run reusable by a plain run of the same settings, and vice versa
    swept = load_experiment(
        write_file('[sweep]\nretriever.name = ["faiss-hnsw"]\ntrain.lr = [0.01]\n')
    )
    [point] = sweep_points(swept)
    direct = load_experiment(write_file(), ["retriever.name=faiss-hnsw", "train.lr=0.01"])
    assert point.experiment == direct
    assert flatten_config(resolved_config(point.experiment)) == flatten_config(
        resolved_config(direct)
    )


def test_sweeping_a_plugin_option_is_checked_by_the_plugin_at_every_point(
    write_file: Callable[..., Path],
) -> None:
    path = write_file('[sweep]\nretriever.name = ["faiss-hnsw"]\nretriever.efSearch = [8, 64]\n')
    points = sweep_points(load_experiment(path))
    assert [point.experiment.plugin_table("retriever").options["efSearch"] for point in points] == [
        8,
        64,
    ]


def test_a_swept_store_url_is_labelled_without_its_password(
    write_file: Callable[..., Path],
) -> None:
    path = write_file('[sweep]\n"store.url" = ["postgresql+psycopg://me:s3cret@db/a"]\n')
    [point] = sweep_points(load_experiment(path))
    assert point.experiment.store.url == "postgresql+psycopg://me:s3cret@db/a"
    assert point.label == "store.url=postgresql+psycopg://me:***@db/a"
