"""Every mistake a user can make in an experiment file is one line that says where and what,
and `retro-platform validate` (like every command) turns it into exit code 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from retro_platform.config import load_experiment
from retro_platform.config.sweep import check_experiment
from retro_platform.errors import ConfigError

from .conftest import BASE

# (what is appended to the valid file or replaces it, --set overrides, expected fragments)
CASES = {
    "toml syntax": (
        "[train\nsteps = 3\n",
        (),
        ["is not valid TOML", "line 42, column 7"],
    ),
    "misspelt key": (
        "",
        ("train.stpes=5",),
        ["[train] unknown key 'stpes'", "(did you mean 'steps'?)"],
    ),
    "misspelt key in the file": (
        "[generate]\nmax_tokns = 5\n",
        (),
        ["[generate] unknown key 'max_tokns'", "(did you mean 'max_tokens'?)"],
    ),
    "misspelt table": (
        "[trian]\nsteps = 5\n",
        (),
        ["unknown table 'trian'", "(did you mean 'train'?)"],
    ),
    "wrong type": (
        "",
        ("train.lr=fast",),
        ["[train] lr:", "valid number", "(got 'fast')"],
    ),
    "wrong type in a list": (
        "",
        ('train.betas=[0.9, "x"]',),
        ["[train] betas[1]:", "valid number", "(got 'x')"],
    ),
    "true for a number": (
        "",
        ("train.steps=true",),
        ["[train] steps:", "must be a number, not true or false", "(got True)"],
    ),
    "false in a list of numbers": (
        "",
        ("model.dec_cross_attn_layers=[false]",),
        ["[model] dec_cross_attn_layers:", "must be a number, not true or false"],
    ),
    "true for a plugin's number": (
        '[retriever]\nname = "faiss-hnsw"\nM = true\n',
        (),
        ["[retriever] M:", "must be a number, not true or false", "faiss-hnsw"],
    ),
    "out of range": (
        "",
        ("model.dec_attn_dropout=1.5",),
        ["[model] dec_attn_dropout:", "less than 1", "(got 1.5)"],
    ),
    "a choice misspelt": (
        "",
        ("train.device=cuad",),
        ["[train] device:", "(got 'cuad')", "(did you mean 'cuda'?)"],
    ),
    "a table that is not one": (
        "",
        ("eval=3",),
        ["[eval] must be a table, got 3"],
    ),
    "unknown plugin": (
        "",
        ("retriever.name=faiss-hsnw",),
        ["[retriever] name: unknown retriever 'faiss-hsnw'", "(did you mean 'faiss-hnsw'?)"],
    ),
    "unknown plugin option": (
        "",
        ("embedder.dimensoin=32",),
        ["unknown option 'dimensoin' in [embedder]", "did you mean 'dimension'"],
    ),
    "bad override": (
        "",
        ("train.steps",),
        ["--set 'train.steps': expected KEY=VALUE"],
    ),
    "override with an empty key": (
        "",
        ("=5",),
        ["--set '=5':", "is not a dotted key"],
    ),
    "override into a value": (
        "",
        ("train.steps.x=5",),
        ["--set 'train.steps.x=5': train.steps is 10, not a table"],
    ),
    "sequence not whole chunks": (
        "",
        ("train.seq_len=100",),
        ["[train] seq_len = 100 is not a multiple of [retrieval] chunk_size = 32", "96 or 128"],
    ),
    "cross-attention outside the decoder": (
        "",
        ("model.dec_cross_attn_layers=[1, 3]",),
        ["[model] dec_cross_attn_layers: layer 3 is outside 1..2 (dec_depth = 2)"],
    ),
    "cross-attention outside the encoder": (
        "",
        ("model.enc_cross_attn_layers=[0]",),
        ["[model] enc_cross_attn_layers: layer 0 is outside 1..1"],
    ),
    "unknown positional encoding": (
        "",
        ("model.positional_encoding=rotry",),
        ["[model] positional_encoding: unknown positional encoding 'rotry'", "'rotary'"],
    ),
    "positional encoding option misspelt": (
        "",
        ("model.positional_encoding_options.thetta=100.0",),
        ["[model] positional_encoding_options: 'rotary' has no option 'thetta'", "'theta'"],
    ),
    "positional encoding refuses a value": (
        "",
        ("model.positional_encoding_options.rotary_dim=3",),
        ["[model] positional encoding 'rotary': rotary_dim must be even and in 2..8"],
    ),
    "the encoding refuses the model's shape": (
        "",
        ("model.dim_head=7",),
        ["[model] positional encoding 'rotary': rotary_dim must be even and in 2..7"],
    ),
    "retrofit from nothing": (
        "",
        ("train.retrofit=true", "train.retrofit_from=missing.pt"),
        ["[train] retrofit_from:", "missing.pt does not exist"],
    ),
    "retrofit without retrieval": (
        "",
        ("train.retrofit=true", "train.neighbours=none"),
        ['[train] retrofit = true needs neighbours = "retrieved"'],
    ),
    "the old retrieval key": (
        "",
        ("train.retrieval=false",),
        ['[train]: retrieval was renamed: write neighbours = "none"'],
    ),
    "a training fraction out of range": (
        "",
        ("train.document_fraction=0",),
        ["[train] document_fraction: Input should be greater than 0"],
    ),
    "shuffled misspelt": (
        "",
        ("train.neighbours=shuffle",),
        ["[train] neighbours:", "did you mean 'shuffled'"],
    ),
    "retrofit_from without retrofit": (
        "",
        ("train.retrofit_from=x.pt",),
        ["[train]: retrofit_from needs retrofit = true"],
    ),
    "an empty prompt": (
        "",
        ('generate.prompts=["def ", " "]',),
        ["[generate] prompts[1] is empty"],
    ),
    "an infinite sampling temperature": (  # else found only at the samples, after training
        "",
        ("generate.temperature=inf",),
        ["[generate] temperature: Input should be a finite number (got inf)"],
    ),
    "mlflow file store": (
        "",
        ("mlflow.tracking_uri=./mlruns",),
        ["[mlflow] tracking_uri = './mlruns' is MLflow's deprecated file store"],
    ),
    "mlflow in the store's database": (
        '[store]\nurl = "sqlite:///shared.db"\n[mlflow]\ntracking_uri = "sqlite:///shared.db"\n',
        (),
        ["[mlflow] tracking_uri is the retrieval store's database"],
    ),
    "bad sweep table": (
        '[sweep]\n"trian.lr" = [0.1, 0.2]\n',
        (),
        ["[sweep] 'trian.lr': unknown table 'trian'", "(did you mean 'train'?)"],
    ),
    "bad sweep key": (
        "[sweep]\ntrain.stpes = [1, 2]\n",
        (),
        ["[sweep] 'train.stpes': [train] has no key 'stpes'", "(did you mean 'steps'?)"],
    ),
    "sweep key into a value": (
        '[sweep]\n"train.lr.x" = [1, 2]\n',
        (),
        ["[sweep] 'train.lr.x': [train] lr is not a table"],
    ),
    "sweep key without a table": (
        "[sweep]\nsteps = [1, 2]\n",
        (),
        ["[sweep]: 'steps': sweep keys are dotted"],
    ),
    "sweep values not a list": (
        "[sweep]\ntrain.steps = 5\n",
        (),
        ["[sweep]: 'train.steps': needs a non-empty list of values"],
    ),
    "a bad sweep point (table)": (
        "[sweep]\ntrain.seq_len = [64, 96]\ntrain.steps = [1, 0]\n",
        (),
        ["[sweep] point 2 of 4 (train.seq_len=64, train.steps=0): [train] steps:", "(got 0)"],
    ),
    "a bad sweep point (rule)": (
        "[sweep]\ntrain.seq_len = [64, 96, 100]\n",
        (),
        ["[sweep] point 3 of 3 (train.seq_len=100): [train] seq_len = 100 is not a multiple"],
    ),
    "a bad sweep point (plugin option)": (
        '[retriever]\nname = "faiss-hnsw"\nefSearch = 16\n'
        '[sweep]\nretriever.name = ["faiss-hnsw", "faiss-flat"]\n',
        (),
        ["[sweep] point 2 of 2 (retriever.name=faiss-flat):", "unknown option 'efSearch'"],
    ),
}


def _text(extra: str) -> str:
    text = BASE
    if "[retriever]" in extra:  # the case's own [retriever] replaces the base file's
        text = text.replace('[retriever]\nname = "faiss-flat"\n', "")
    if extra.startswith("[train\n"):  # a syntax error on a line that the message must name
        return text + "\n" * (41 - text.count("\n")) + extra
    return text + extra


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_is_one_line_naming_the_key(
    case: str, write_file: Callable[..., Path], invoke: Callable[..., Result]
) -> None:
    extra, overrides, expected = CASES[case]
    path = write_file(text=_text(extra))
    with pytest.raises(ConfigError) as caught:
        check_experiment(load_experiment(path, overrides))
    message = str(caught.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message

    args = ["validate", path]
    for override in overrides:
        args += ["--set", override]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"Error: {message}"
    assert result.stdout == ""


def test_the_valid_file_is_valid(write_file: Callable[..., Path]) -> None:
    # so that each case above fails for its own reason alone
    points = check_experiment(load_experiment(write_file()))
    assert len(points) == 1


def test_a_missing_file_and_a_folder(tmp_path: Path, invoke: Callable[..., Result]) -> None:
    result = invoke("validate", tmp_path / "nothing.toml")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    with pytest.raises(ConfigError, match="is a folder"):
        load_experiment(tmp_path)


def test_stage_commands_take_set_and_refuse_before_touching_the_store(
    write_file: Callable[..., Path], invoke: Callable[..., Result], tmp_path: Path
) -> None:
    path = write_file()
    for command in (["ingest"], ["index"], ["search", "query"]):
        result = invoke(*command[:1], path, *command[1:], "--set", "train.seq_len=100")
        assert result.exit_code == 2, result.output
        assert "[train] seq_len = 100 is not a multiple" in result.stderr
    assert not (tmp_path / "store").exists()
