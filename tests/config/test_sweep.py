"""``[sweep]``: the grid's points, in order, each a fully validated experiment."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from retro_platform.config import load_experiment
from retro_platform.config.resolved import flatten_config, resolved_config
from retro_platform.config.sweep import SweepPoint, point_name, sweep_points
from retro_platform.errors import ConfigError


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
    assert last.label == "name=faiss-hnsw,lr=0.0003,theta=100"
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
    # equal but for the --set overrides each was loaded with, which only its hints repeat
    assert (point.experiment.overrides, direct.overrides) == (
        (),
        ("retriever.name=faiss-hnsw", "train.lr=0.01"),
    )
    assert point.experiment.model_copy(update={"overrides": direct.overrides}) == direct
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


def test_a_point_is_named_by_its_keys_last_parts_and_values() -> None:
    assert point_name({"train.neighbours": "none"}) == "neighbours=none"
    assert point_name({"train.lr": 3e-4, "train.steps": 600}) == "lr=0.0003,steps=600"
    assert point_name({"eval.retrieval_off": False}) == "retrieval_off=off"
    # keys that end alike keep as many parts as tell them apart
    assert point_name({"retriever.name": "faiss-flat", "embedder.name": "hashing"}) == (
        "retriever.name=faiss-flat,embedder.name=hashing"
    )
    assert point_name({"a.x.name": 1, "b.x.name": 2, "c.name": 3}) == (
        "a.x.name=1,b.x.name=2,c.name=3"
    )
    assert point_name({}) == ""


def test_a_value_listed_twice_is_refused_so_every_point_has_its_own_name(
    write_file: Callable[..., Path],
) -> None:
    path = write_file("[sweep]\ntrain.lr = [0.01, 0.02, 0.01]\n")
    with pytest.raises(ConfigError, match=r"points 1 and 3 are the same \(lr=0.01\)"):
        sweep_points(load_experiment(path))
    names = [point.label for point in sweep_points(load_experiment(write_file(
        '[sweep]\nretriever.name = ["faiss-flat", "faiss-hnsw"]\ntrain.lr = [0.01, 0.02]\n'
    )))]  # fmt: skip
    assert len(set(names)) == len(names) == 4


def test_a_swept_store_url_is_labelled_without_its_password(
    write_file: Callable[..., Path],
) -> None:
    path = write_file('[sweep]\n"store.url" = ["postgresql+psycopg://me:s3cret@db/a"]\n')
    [point] = sweep_points(load_experiment(path))
    assert point.experiment.store.url == "postgresql+psycopg://me:s3cret@db/a"
    assert point.label == "url=postgresql+psycopg://me:***@db/a"
