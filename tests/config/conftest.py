"""A small valid experiment file to break in one place, and a CLI runner on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from retro_platform.cli import cli

#: A complete, valid file: a folder of text files, byte tokens, hashing vectors, exact search,
#: 32-token chunks and 128-token sequences.
BASE = """\
[experiment]
name = "config-test"

[corpus]
name = "text-files"
path = "."

[tokenizer]
name = "bytes"

[embedder]
name = "hashing"
dimension = 64

[retriever]
name = "faiss-flat"

[retrieval]
chunk_size = 32

[model]
dec_dim = 32
dec_depth = 2
dec_cross_attn_layers = [2]
enc_dim = 16
enc_depth = 1
heads = 2
dim_head = 8

[train]
seq_len = 128
steps = 10
"""


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[..., Path]:
    """``write_file(extra="", text=BASE)``: ``text`` plus ``extra`` as experiment.toml."""

    def write(extra: str = "", text: str = BASE) -> Path:
        path = tmp_path / "experiment.toml"
        path.write_text(text + extra)
        (tmp_path / "notes.txt").write_text("A corpus of one document for [corpus] path.\n")
        return path

    return write


@pytest.fixture
def invoke() -> Callable[..., Result]:
    """Run ``retro-platform ARGS`` in-process, as a user would."""

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, [str(arg) for arg in args])

    return run
