"""`retro-platform generate` on a real trained run: the three ways to name the model, the prompt
from an argument, a file or stdin, streaming and JSON, sources, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.cli.common import open_experiment
from retro_platform.generation import search
from tests.runner.helpers import tiny_experiment

PROMPT = "def insort_left(a, x, lo=0, hi=None):\n    if lo"  # 50 bytes: 3 chunks


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny experiment, run to the end (seconds): its file."""
    path = tiny_experiment(tmp_path_factory.mktemp("generate"))
    result = invoke("run", str(path), "--no-progress")
    assert result.exit_code == 0, result.output
    return path


def run_folder(path: Path) -> Path:
    [folder] = [p.parent for p in (path.parent / "runs").glob("*/done.json")]
    return folder


def generated(path: Path, *args: str, input: str | None = None) -> dict:
    result = invoke("generate", str(path), *args, "--json", input=input)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_generate_streams_text_then_lists_the_sources(trained: Path) -> None:
    result = invoke("generate", str(trained), PROMPT, "--max-tokens", "40")
    assert result.exit_code == 0, result.output
    record = generated(trained, PROMPT, "--max-tokens", "40")
    assert record["text"] in result.output  # greedy: the same text both times
    assert "Sources (the neighbours of each completed chunk" in result.output
    assert record["generated_tokens"] == 40 and record["finish"] == "length"
    chunks = record["sources"]
    assert [c["chunk"] for c in chunks] == list(range(len(chunks)))
    assert {c["from"] for c in chunks} == {"prompt", "generated"}
    experiment, store = open_experiment(str(trained))
    for chunk in chunks:
        # the neighbours used are what `search` finds for the chunk's text
        hits = search(experiment, store, chunk["query"], 2)
        assert [n["chunk_id"] for n in chunk["neighbours"]] == [h.chunk_id for h in hits]
        for n, hit in zip(chunk["neighbours"], hits, strict=True):
            assert (n["document"], n["position"], n["text"]) == (
                hit.document,
                hit.position,
                hit.text,
            )
            assert n["score"] == pytest.approx(hit.score, abs=1e-5)
            assert f"{n['document']}  chunk {n['position']}  (id {n['chunk_id']})" in result.output


def test_the_three_ways_to_name_the_model_and_to_give_the_prompt_agree(trained: Path) -> None:
    folder = run_folder(trained)
    run_id = (folder / "mlflow_run_id").read_text().strip()
    copy = trained.parent / "elsewhere.pt"
    shutil.copy(folder / "checkpoint.pt", copy)
    prompt_file = trained.parent / "prompt.txt"
    prompt_file.write_text(PROMPT)
    options = ("--max-tokens", "24", "--temperature", "0.9", "--top-p", "0.9", "--seed", "5")
    first = generated(trained, PROMPT, *options)
    again = generated(trained, PROMPT, *options)  # a seed reproduces
    assert {**again, "seconds": 0} == {**first, "seconds": 0}
    for variant in (
        generated(trained, PROMPT, "--run-id", run_id, *options),
        generated(trained, PROMPT, "--checkpoint", str(copy), *options),
        generated(trained, "--prompt-file", str(prompt_file), *options),
        generated(trained, *options, input=PROMPT),
        generated(trained, "--prompt-file", "-", *options, input=PROMPT),
    ):
        assert variant["text"] == first["text"]
        assert variant["sources"] == first["sources"]
    other_seed = generated(trained, PROMPT, *options[:-1], "6")
    assert other_seed["text"] != first["text"]


def test_stop_strings_and_retrieval_off(trained: Path) -> None:
    free = generated(trained, PROMPT, "--max-tokens", "40")
    stop = free["text"][5:7]
    stopped = generated(trained, PROMPT, "--max-tokens", "40", "--stop", stop)
    assert (
        stopped["finish"] == "stop" and stopped["text"] == free["text"][: free["text"].find(stop)]
    )
    # streamed, the text stops where the JSON's does: the token that completes the stop string
    # reaches the terminal before generation ends, and none of the stop string may show
    shown = invoke("generate", str(trained), PROMPT, "--max-tokens", "40", "--stop", stop)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith(stopped["text"] + "\n\nSources"), shown.stdout
    off = generated(trained, PROMPT, "--max-tokens", "40", "--no-retrieval")
    assert off["sources"] == [] and off["retrieval"] is False


def test_excluded_documents_are_left_out_of_the_sources(trained: Path) -> None:
    record = generated(trained, PROMPT, "--max-tokens", "40")
    named = record["sources"][0]["neighbours"][0]["document"]
    without = generated(trained, PROMPT, "--max-tokens", "40", "--exclude-document", named)
    documents = {n["document"] for c in without["sources"] for n in c["neighbours"]}
    assert named not in documents and documents


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "the prompt is empty"),
        (["x" * 65], "prompt 1 is 65 tokens; the model reads at most 64 (max_seq_len)"),
        (["x", "--run-id", "0123456789abcdef0123456789abcdef"], "no run folder under"),
        (["x", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["x", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["x", "--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["x", "--temperature", "inf"], "--temperature must be finite and at least 0"),
        (["x", "--seed", str(2**70)], "--seed must fit in 64 bits"),
        (["x", "--checkpoint", "missing.pt"], "--checkpoint missing.pt is not a file"),
        (["x", "--exclude-document", "nope.py"], "--exclude-document 'nope.py' is not a document"),
        (
            ["x", "--no-retrieval", "--exclude-document", "a.py"],
            "--exclude-document needs retrieval on: drop --no-retrieval",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(trained: Path, args, message) -> None:
    result = invoke("generate", str(trained), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.strip().count("\n") == 0 or result.output.startswith("model:")
    # refused before the embedder and the chunk tokens are loaded (seconds on a real store)
    assert "retrieval ready" not in result.output


def test_a_byte_order_mark_is_not_part_of_the_prompt(trained: Path) -> None:
    """Windows editors start a UTF-8 file with a BOM; it was read as a character of the prompt
    and changed the tokens the model saw."""
    plain = generated(trained, PROMPT, "--max-tokens", "8")
    marked = trained.parent / "marked.txt"
    marked.write_bytes(b"\xef\xbb\xbf" + PROMPT.encode())
    from_file = generated(trained, "--prompt-file", str(marked), "--max-tokens", "8")
    from_stdin = generated(
        trained, "--prompt-file", "-", "--max-tokens", "8", input=marked.read_bytes()
    )
    same = [{**record, "seconds": 0} for record in (from_file, from_stdin, plain)]
    assert same[0] == same[1] == same[2]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--prompt-file", "-"], b"", "the prompt is empty"),
        (["--prompt-file", "-"], b" \n\t\n", "the prompt is empty"),
        ([], b"\xff\xfe def", "cannot read the prompt from standard input: 'utf-8' codec"),
        (["--prompt-file", "-"], b"\xff\xfe def", "cannot read the prompt from standard input"),
    ],
)
def test_a_prompt_on_stdin_follows_the_argument_s_rules(
    trained: Path, args, stdin, message
) -> None:
    """Whitespace is no prompt, however it comes; bytes that are not UTF-8 are refused, as from
    --prompt-file (read as text, they became other characters, silently)."""
    result = CliRunner().invoke(cli, ["generate", str(trained), *args], input=stdin)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1, result.output


def test_a_whitespace_prompt_file_is_refused(trained: Path) -> None:
    blank = trained.parent / "blank.txt"
    blank.write_text("  \n\n")
    result = invoke("generate", str(trained), "--prompt-file", str(blank))
    assert result.exit_code == 2 and "the prompt is empty" in result.output, result.output


def test_a_closed_stdin_is_a_one_line_error(trained: Path) -> None:
    """Started with standard input closed (``<&-``), Python has no ``sys.stdin`` at all."""
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "retro_platform", "generate", str(trained)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        # close fd 0 in the child before Python starts, as the shell's <&- does
        preexec_fn=lambda: os.close(0),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "Error: no prompt: standard input is closed; give it as an argument or with --prompt-file\n"
    )


def test_a_huge_max_tokens_is_not_allocated_up_front(trained: Path) -> None:
    """Generation may go on until a stop string (or Ctrl-C): --max-tokens is a bound, not a size
    to allocate (10**11 tokens were 745 GiB, a MemoryError traceback)."""
    free = generated(trained, PROMPT, "--max-tokens", "4")
    stop = free["text"][:1]
    assert stop.isascii(), free["text"]  # one byte: the first token alone completes it
    record = generated(trained, PROMPT, "--max-tokens", str(10**11), "--stop", stop)
    assert record["finish"] == "stop" and record["text"] == ""


def test_a_checkpoint_from_another_store_is_refused(trained: Path, tmp_path: Path) -> None:
    """The same corpus cut by another tokenizer: the checkpoint cannot read that store."""
    other = tiny_experiment(tmp_path, tokenizer={"name": "bpe", "vocab_size": 300})
    assert invoke("ingest", str(other), "--no-progress").exit_code == 0
    assert invoke("index", str(other), "--no-progress").exit_code == 0
    checkpoint = run_folder(trained) / "checkpoint.pt"
    result = invoke("generate", str(other), "x", "--checkpoint", str(checkpoint))
    assert result.exit_code == 2, result.output
    assert "does not match the store of" in result.output
    assert "trained on another corpus" in result.output
    # and the experiment file alone has no trained run there
    result = invoke("generate", str(other), "x")
    assert result.exit_code == 2 and "has no trained run" in result.output


def test_knowledge_added_and_removed_without_retraining(tmp_path: Path, database_url: str) -> None:
    """A made-up fact ingested into a trained run's store (SQLite, then PostgreSQL) is retrieved
    at once, named in the sources, and gone once removed; the model's checkpoint never changes."""
    path = tiny_experiment(tmp_path, store={"url": database_url})
    assert invoke("run", str(path), "--no-progress").exit_code == 0
    checkpoint = run_folder(path) / "checkpoint.pt"
    weights = checkpoint.read_bytes()
    prompt = "The capital of Zorblaxia is"

    def documents_in_sources() -> set[str]:
        record = generated(path, prompt, "--max-tokens", "16")
        return {n["document"] for c in record["sources"] for n in c["neighbours"]}

    assert "zorblaxia.txt" not in documents_in_sources()
    (tmp_path / "corpus" / "zorblaxia.txt").write_text(
        "The capital of Zorblaxia is Quennith, a city of glass bridges.\n"
    )
    added = invoke("ingest", str(path), "--no-progress")
    assert added.exit_code == 0 and "1 added" in added.output, added.output
    indexed = invoke("index", str(path), "--no-progress")
    assert indexed.exit_code == 0 and "(no rebuild" in indexed.output, indexed.output
    assert "zorblaxia.txt" in documents_in_sources()
    shown = invoke("generate", str(path), prompt, "--max-tokens", "16")
    assert "zorblaxia.txt  chunk 0" in shown.output

    removed = invoke("ingest", str(path), "--remove", "zorblaxia.txt")
    assert removed.exit_code == 0, removed.output
    (tmp_path / "corpus" / "zorblaxia.txt").unlink()  # else the next ingest brings it back
    assert invoke("index", str(path), "--no-progress").exit_code == 0
    assert "zorblaxia.txt" not in documents_in_sources()
    assert checkpoint.read_bytes() == weights  # nothing was retrained


def test_docs_name_every_option_and_json_field(trained: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "generate.md").read_text()
    command = cli.commands["generate"]
    for parameter in command.params:
        for flag in parameter.opts + parameter.secondary_opts:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in doc, f"docs/generate.md does not describe {flag}"
    record = generated(trained, PROMPT, "--max-tokens", "20")
    for field in record:
        assert f"`{field}`" in doc, f"docs/generate.md does not describe the JSON field {field}"
    for field in record["sources"][0]["neighbours"][0]:
        assert field in doc


def test_the_checkpoint_s_record_of_its_tokenizer_is_checked(trained: Path, tmp_path: Path) -> None:
    """A checkpoint that says it learned another tokenizer is refused; one from before
    checkpoints recorded it is checked on vocabulary, padding and chunk size alone."""
    from retro_platform.training.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(run_folder(trained) / "checkpoint.pt")
    assert set(state["origin"]) == {"corpus", "tokenizer"}
    other = tmp_path / "other-tokenizer.pt"
    save_checkpoint(other, {**state, "origin": {**state["origin"], "tokenizer": "0" * 16}})
    result = invoke("generate", str(trained), "x", "--checkpoint", str(other))
    assert result.exit_code == 2 and "cuts text differently" in result.output, result.output
    older = tmp_path / "older.pt"
    save_checkpoint(older, {key: value for key, value in state.items() if key != "origin"})
    assert (
        generated(trained, PROMPT, "--checkpoint", str(older))["text"]
        == generated(trained, PROMPT)["text"]
    )


def test_a_hint_repeats_the_set_overrides_it_was_given(trained: Path) -> None:
    """The command a hint names is the one that was run: with its --set overrides, quoted."""
    result = invoke("generate", str(trained), "x", "--set", "train.steps=7",
                    "--set", "experiment.name=two words")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.rstrip().endswith(
        f"run: retro-platform run {trained} --set train.steps=7 --set 'experiment.name=two words'"
    ), result.output
