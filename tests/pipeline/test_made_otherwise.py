"""Stored embeddings made by another distribution or version of the experiment's embedder
(the plugin upgraded, or uninstalled and replaced by another that registers the same name) are
used as stored, with a one-line warning that names both and the command that embeds again:
before, they were reused in silence, though vectors of two models do not compare."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.plugins import reset_plugins
from tests.pipeline.helpers import write_experiment, write_stdlib_corpus

TEAM_EMBEDDER = """
from retro_platform import hookimpl
from retro_platform.default_plugins.embedders.hashing import HashingEmbedder


@hookimpl
def register_embedders(register):
    register("team-hashing", HashingEmbedder)
"""


def _warnings(*arguments: str) -> list[str]:
    result = CliRunner().invoke(cli, [*arguments, "--no-progress"])
    assert result.exit_code == 0, result.output
    return [line for line in result.stderr.splitlines() if line.startswith("Warning:")]


def _set_version(folder: Path, dist: str, version: str) -> None:
    module = dist.replace("-", "_")
    info = folder / f"{module}-1.0.dist-info"
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    reset_plugins()


def test_embeddings_of_another_version_or_distribution_are_used_with_a_warning(
    tmp_path: Path, plugin_dist, third_party_plugins
) -> None:
    folder = plugin_dist("team-embedders", TEAM_EMBEDDER)
    corpus = write_stdlib_corpus(tmp_path / "corpus", ("bisect.py",))
    path = str(write_experiment(tmp_path, corpus, embedder={"name": "team-hashing"}))
    assert _warnings("ingest", path) == []
    assert _warnings("index", path) == []
    assert _warnings("index", path) == []  # the same plugin: nothing to say

    _set_version(folder, "team-embedders", "1.1")  # upgraded
    [reused] = _warnings("index", path)
    assert reused == (
        "Warning: the embeddings this index reuses (embedding set 1) were made by "
        "team-embedders 1.0, and this experiment's embedder 'team-hashing' now comes from "
        f"team-embedders 1.1: if it computes other vectors, embed again: retro-platform index "
        f"{path} --reembed"
    )
    [searched] = [
        line
        for line in CliRunner().invoke(cli, ["search", path, "def insort"]).stderr.splitlines()
        if line.startswith("Warning:")
    ]
    assert searched.startswith("Warning: the embeddings searched here (embedding set 1) were ")

    # uninstalled, and another distribution registers the same name
    shutil.rmtree(folder / "team_embedders-1.0.dist-info")
    (folder / "team_embedders.py").unlink()
    plugin_dist("other-embedders", TEAM_EMBEDDER)
    reset_plugins()
    (corpus / "added.py").write_text("def added():\n    return 1\n")
    assert _warnings("ingest", path) == []
    [copied] = _warnings("index", path)  # the new version copies the earlier vectors
    assert copied.startswith(
        "Warning: the earlier version's embeddings copied (embedding set 1) were made by "
        "team-embedders 1.0, and this experiment's embedder 'team-hashing' now comes from "
        "other-embedders 1.0: "
    )
    assert _warnings("index", path, "--reembed") == []
    assert _warnings("index", path) == []  # embedded again by the plugin installed now
