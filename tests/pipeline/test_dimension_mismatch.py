"""An embedder whose dimension changed under the same options (its model files were replaced)
is caught before it can mix vectors of two models, with the command that re-embeds."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.cli.common import open_experiment
from retro_platform.errors import ConfigError
from retro_platform.generation import search
from retro_platform.pipeline import ingest, run_index

# A third party's embedder whose width comes from its environment, as a local model folder's
# would from its files: the options (and so the stored fingerprint) stay the same.
SHIFTING_EMBEDDER = """
import hashlib
import os

import numpy as np

from retro_platform import hookimpl
from retro_platform.protocols import Embedder


class ShiftingEmbedder(Embedder):
    @property
    def dimension(self):
        return int(os.environ["SHIFTING_DIMENSION"])

    @property
    def normalized(self):
        return True

    def embed(self, texts):
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dimension))
        vectors = np.array(rows, dtype=np.float32).reshape(len(texts), self.dimension)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


@hookimpl
def register_embedders(register):
    register("shifting", ShiftingEmbedder)
"""


def test_a_changed_embedding_width_asks_to_reembed(
    experiment_file, plugin_dist, third_party_plugins, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin_dist("shifting-embedder", SHIFTING_EMBEDDER)
    path = experiment_file(embedder={"name": "shifting"})
    monkeypatch.setenv("SHIFTING_DIMENSION", "8")
    experiment, store = open_experiment(path)
    ingest(experiment, store, progress=False)
    run_index(experiment, store, progress=False, log=lambda _: None)
    assert search(experiment, store, "import os", 2)

    monkeypatch.setenv("SHIFTING_DIMENSION", "16")
    with pytest.raises(ConfigError, match="--reembed"):
        run_index(experiment, store, progress=False, log=lambda _: None)
    for command in (["search", str(path), "import os"], ["index", str(path)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert "16-d" in result.output and "8-d" in result.output and "--reembed" in result.output
        assert result.output.count("\n") == 1

    result = CliRunner().invoke(cli, ["index", str(path), "--reembed"])
    assert result.exit_code == 0, result.output
    hits = search(experiment, store, "import os", 2)
    assert len(hits) == 2
    assert CliRunner().invoke(cli, ["store", "check", str(path)]).exit_code == 0
