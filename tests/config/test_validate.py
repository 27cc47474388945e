"""``retro-platform validate``: checks a file, prints a summary, and does nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from tests.limits import HANG_S


def _tree(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def test_a_valid_file_gives_a_summary_and_exit_0(
    write_file: Callable[..., Path], invoke: Callable[..., Result]
) -> None:
    path = write_file('[sweep]\nretriever.name = ["faiss-flat", "faiss-hnsw"]\ntrain.lr = [0.1]\n')
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: valid"
    assert "experiment 'config-test', seed 0" in lines
    assert (
        "plugins: corpus text-files, tokenizer bytes, embedder hashing, retriever faiss-flat, "
        "positional encoding rotary"
    ) in lines
    assert any(line.startswith("model: ") and "(vocabulary 257)" in line for line in lines)
    assert "sweep: 2 points over retriever.name (2), train.lr (1)" in lines


def test_the_parameter_count_is_the_model_s(
    write_file: Callable[..., Path], invoke: Callable[..., Result]
) -> None:
    from retro_platform.model.retro import RETRO

    result = invoke("validate", write_file())
    model = RETRO(
        num_tokens=257,
        max_seq_len=128,
        chunk_size=32,
        dec_dim=32,
        dec_depth=2,
        dec_cross_attn_layers=(2,),
        enc_dim=16,
        enc_depth=1,
        heads=2,
        dim_head=8,
    )
    count = sum(parameter.numel() for parameter in model.parameters())
    assert f"model: {count / 1e6:.2f}M parameters (vocabulary 257)" in result.stdout


def test_validate_writes_nothing(
    write_file: Callable[..., Path], invoke: Callable[..., Result], tmp_path: Path
) -> None:
    path = write_file('[mlflow]\ntracking_uri = "sqlite:///mlflow.db"\n')
    before = _tree(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a relative database would land here
    try:
        assert invoke("validate", path).exit_code == 0
        assert invoke("validate", path, "--set", "train.seq_len=100").exit_code == 2
    finally:
        os.chdir(cwd)
    assert _tree(tmp_path) == before


def test_validate_does_not_load_the_embedding_model(write_file: Callable[..., Path]) -> None:
    # sentence-transformers takes seconds to import: validating must not need it, even for a
    # file that uses it
    path = write_file()
    embedder = 'name = "sentence-transformers"'
    path.write_text(path.read_text().replace('name = "hashing"\ndimension = 64', embedder))
    code = (
        "import sys\n"
        "from retro_platform.cli import cli\n"
        "try:\n"
        "    cli(['validate', sys.argv[1]])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "assert 'sentence_transformers' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=HANG_S
    )
    assert done.returncode == 0, done.stderr
    assert "sentence-transformers" in done.stdout and done.stdout.rstrip().endswith("ok")


def test_a_corpus_that_cannot_be_read_is_one_line_and_exit_2(
    write_file: Callable[..., Path], invoke: Callable[..., Result], tmp_path: Path
) -> None:
    """validate checks what run checks before any work, the corpus included: its reader's
    check (a path that exists, files that match)."""
    path = write_file()
    result = invoke("validate", path, "--set", "corpus.path=missing")
    assert result.exit_code == 2, result.output
    assert (
        result.output
        == f"Error: [corpus] path: corpus path {tmp_path / 'missing'} does not exist\n"
    )
    (tmp_path / "notes.txt").unlink()  # the folder exists, but holds no file to read
    result = invoke("validate", path)
    assert result.exit_code == 2 and "[corpus] include: no file under" in result.output
