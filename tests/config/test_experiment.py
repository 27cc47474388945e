"""Loading an experiment file: every problem is one line that names the table and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.config import load_experiment
from retro_platform.errors import ConfigError


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "experiment.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_defaults_and_relative_paths_come_from_the_files_folder(tmp_path: Path) -> None:
    experiment = load_experiment(write(tmp_path, '[experiment]\nname = "x"\n'))
    assert experiment.store.path == tmp_path / "store"
    assert experiment.store.database_url == f"sqlite:///{tmp_path / 'store' / 'retro.db'}"
    assert experiment.retrieval.chunk_size == 64 and experiment.retrieval.neighbours == 2
    experiment = load_experiment(write(tmp_path, '[store]\npath = "elsewhere/s"\n'))
    assert experiment.store.path == tmp_path / "elsewhere" / "s"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[retrieval]\nchunk_sise = 32\n",
            "[retrieval] unknown key 'chunk_sise' (did you mean 'chunk_size'?)",
        ),
        ("[retreival]\nchunk_size = 32\n", "unknown table 'retreival' (did you mean 'retrieval'?)"),
        (
            "[retrieval]\nneighbours = 0\n",
            "[retrieval] neighbours: Input should be greater than or equal to 1",
        ),
        ("[retrieval]\nchunk_size = 'big'\n", "[retrieval] chunk_size"),
        ("[retrieval\nchunk_size = 32\n", "is not valid TOML"),
        ("[corpus]\npath = 'x'\n", '[corpus] needs name = "..."'),
    ],
)
def test_problems_are_one_line_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_experiment(write(tmp_path, text))
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_a_file_that_is_not_utf8_or_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_experiment(write(tmp_path, b"[experiment]\nname = '\xff'\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "missing.toml")


def test_plugin_options_are_checked_by_the_plugin(tmp_path: Path) -> None:
    path = write(tmp_path, '[retriever]\nname = "faiss-hnsw"\nefsearch = 10\n')
    experiment = load_experiment(path)
    with pytest.raises(ConfigError, match="unknown option 'efsearch' in \\[retriever\\]"):
        experiment.check_plugins()
    result = CliRunner().invoke(cli, ["index", str(path)])
    assert result.exit_code == 2 and "did you mean 'efSearch'" in result.output
    assert not (tmp_path / "store").exists()


def test_a_plugin_table_is_validated_once_and_follows_its_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[retriever]\nname = "faiss-hnsw"\nefSearch = 16\n')
    experiment = load_experiment(path)
    retriever = experiment.plugin_table("retriever")
    assert retriever.name == "faiss-hnsw" and retriever.options["efSearch"] == 16
    assert "efSearch" not in retriever.stored_options  # a search-time option
    # every stage that asks again gets the same validated object
    experiment.check_plugins()
    assert experiment.plugin_table("retriever") is retriever
    # a copy with another table is validated afresh, and the original is unchanged
    other = experiment.model_copy(update={"retriever": {"name": "faiss-hnsw", "efSearch": 32}})
    assert other.plugin_table("retriever").options["efSearch"] == 32
    assert experiment.plugin_table("retriever") is retriever
    # the cache is not part of the experiment: an equal file gives an equal experiment
    assert load_experiment(path) == experiment
    assert experiment.hint_file == str(path)


def test_a_hint_names_a_file_with_a_space_as_one_shell_argument(tmp_path: Path) -> None:
    """The fix-it hints' command is pasted into a shell: the file's path is quoted as the
    --set overrides are (it read 'retro-platform index a b/experiment.toml')."""
    folder = tmp_path / "a b"
    folder.mkdir()
    path = write(folder, '[experiment]\nname = "x"\n')
    experiment = load_experiment(path, ["train.steps=3"])
    assert experiment.hint_file == f"'{path}' --set train.steps=3"
