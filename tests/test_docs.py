"""docs/plugins.md cannot drift: every hook has a heading, and its examples are run here."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
import types
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch

from retro_platform import plugins
from retro_platform.errors import IndexFileError, UnknownPluginError
from retro_platform.hookspecs import hook_names
from retro_platform.protocols import CorpusReader, Embedder, Retriever, Tokenizer
from retro_platform.protocols.positional_encoding import PositionalEncoding
from tests.limits import HANG_S

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TEXT = DOC.read_text()

RIVAL = """
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PositionalEncoding

@hookimpl
def register_positional_encodings(register):
    register("rotary", PositionalEncoding)
"""


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", TEXT, flags=re.S | re.M)


def plugin_block(hook: str) -> str:
    """The one ``python`` block that implements ``hook``."""
    [block] = [block for block in code_blocks("python") if f"def {hook}(" in block]
    return block


def headings() -> list[str]:
    """The first word of every heading, without backticks or a trailing ``(...)``."""
    return re.findall(r"^#+\s+`?([\w.-]+)", TEXT, flags=re.M)


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_heading(hook: str) -> None:
    assert hook in headings(), f"docs/plugins.md needs a heading for the hook {hook}"


def test_every_hook_heading_is_a_real_hook() -> None:
    documented = {heading for heading in headings() if heading.startswith("register_")}
    assert documented <= set(hook_names())


def test_the_loading_controls_and_the_command_are_documented() -> None:
    assert f"## Choosing which plugins load: `{plugins.LOAD_PLUGINS_ENV}`" in TEXT
    assert "## Listing plugins: `retro-platform plugins`" in TEXT
    assert "retro-platform plugins --json" in TEXT
    for method in ("embed", "rotate", "bias"):
        assert f"`PositionalEncoding.{method}(" in TEXT


def test_the_example_plugin_loads_and_works(
    third_party_plugins: None, plugin_dist: Callable[..., Path]
) -> None:
    plugin_dist("retro-platform-distance", plugin_block("register_positional_encodings"))
    registration = plugins.get_positional_encoding("distance-penalty")
    assert registration.distribution == "retro-platform-distance"
    encoding = registration.factory(
        role="decoder", dim=8, heads=2, dim_head=4, max_positions=16, causal=True, slope=0.5
    )
    bias = encoding.bias(torch.arange(4), torch.arange(4))
    assert bias.shape == (2, 4, 4)
    assert torch.equal(bias[1], -0.5 * (torch.arange(4)[:, None] - torch.arange(4)).abs())
    assert plugins.load_errors() == []


def test_the_json_examples_are_what_the_command_prints(
    third_party_plugins: None, plugin_dist: Callable[..., Path]
) -> None:
    plugin_dist("retro-platform-broken", "import faiss_gpu\n", entry_point="broken")
    printed = {info["name"]: info for info in plugins.plugin_info()}
    examples = [json.loads(block) for block in code_blocks("json")]
    assert {example["status"] for example in examples} >= {"loaded", "broken"}
    for example in examples:
        assert example == printed[example["name"]]


def test_the_warning_examples_are_what_retro_platform_prints(
    third_party_plugins: None,
    plugin_dist: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plugin_dist("retro-platform-broken", "import faiss_gpu\n", entry_point="broken")
    plugin_dist("retro-platform-rival", RIVAL, entry_point="rival")
    plugins.load_plugins()
    printed = capsys.readouterr().err.splitlines()
    documented = [
        line
        for block in code_blocks("text")
        for line in block.splitlines()
        if line.startswith("Warning:")
    ]
    assert sorted(printed) == sorted(documented)


def test_the_messages_for_a_plugin_that_did_not_load_are_what_retro_platform_says(
    third_party_plugins: None,
    plugin_dist: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from retro_platform.config.plugin_table import validate_plugin_table

    def error(name: str) -> str:
        with pytest.raises(UnknownPluginError) as caught:
            validate_plugin_table("retriever", "retrievers", {"name": name}, tmp_path)
        return f"Error: {caught.value}"

    plugin_dist("retro-platform-fancy", "import fancy_gpu_kernels\n", entry_point="fancy")
    monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, "fancy")  # no other third-party retrievers
    said = {error("fancy"), error("fancy-ann")}
    plugins.reset_plugins()
    monkeypatch.setenv(plugins.DISABLE_PLUGINS_ENV, "retro-platform-fancy")
    said.add(error("fancy"))
    documented = {line for line in TEXT.splitlines() if line.startswith("Error: [retriever]")}
    assert documented == said


# ---- the retriever example: the first python block, run as a plugin -------------------------


def exact_search(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every score, sorted; higher is nearer."""
    if metric == "ip":
        scores = queries @ vectors.T
    else:
        scores = -((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, best, axis=1), ids[best]


@pytest.fixture
def numpy_exact(
    third_party_plugins: None, plugin_dist: Callable[..., Path]
) -> plugins.Registration:
    """The retriever example installed from the doc's own pyproject.toml and module."""
    [pyproject] = [tomllib.loads(b) for b in code_blocks("toml") if "[project]" in b]
    [(entry_point, module)] = pyproject["project"]["entry-points"]["retro_platform"].items()
    dist = pyproject["project"]["name"]
    assert module == dist.replace("-", "_")  # what plugin_dist names the module
    plugin_dist(dist, plugin_block("register_retrievers"), entry_point=entry_point)
    [table] = [b for b in code_blocks("toml") if "[retriever]" in b and entry_point in b]
    registration = plugins.get_registration("retrievers", tomllib.loads(table)["retriever"]["name"])
    assert (registration.plugin, registration.distribution) == (entry_point, dist)
    assert plugins.load_errors() == []
    return registration


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_the_retriever_example_searches_exactly(
    numpy_exact: plugins.Registration, metric: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    ids = rng.choice(10**12, size=300, replace=False).astype(np.int64)  # like chunk ids
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    retriever = plugins.build_plugin(
        "retrievers", {"name": "numpy-exact", "metric": metric, "query_batch_size": 7}, 16
    )
    retriever.build(vectors, ids)
    assert retriever.size == 300
    assert sorted(retriever.stored_ids()) == sorted(ids)

    scores, found = retriever.search(queries, 10)
    want_scores, want_ids = exact_search(vectors, ids, queries, 10, metric)
    assert (scores.dtype, found.dtype, found.shape) == (np.float32, np.int64, (50, 10))
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-3)

    # fewer stored than k: padded with id -1 and score -inf at the end of each row
    scores, found = retriever.search(queries[:3], 305)
    assert (found[:, 300:] == -1).all() and np.isneginf(scores[:, 300:]).all()
    assert (found[:, :300] != -1).all() and (np.diff(scores[:, :300], axis=1) <= 0).all()

    # save, then load into a fresh instance: the same answers
    folder = tmp_path / "indexes"
    folder.mkdir()
    path = (
        folder / f".abc{retriever.file_suffix}.1234.partial{retriever.file_suffix}"
    )  # as the core
    retriever.save(path)
    assert list(folder.iterdir()) == [path]  # exactly the path it is given, nothing beside it
    loaded = plugins.build_plugin("retrievers", {"name": "numpy-exact", "metric": metric}, 16)
    loaded.load(path)
    assert loaded.size == 300
    scores, found = loaded.search(queries, 10)  # another query_batch_size: a runtime option
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-3)

    # the optional updates
    loaded.add(vectors[:2] + 1, np.array([-5, -6]))
    assert loaded.remove(np.concatenate([ids[:100], [12345]])) == 100
    assert loaded.size == 202
    assert not np.isin(loaded.search(queries, 202)[1], ids[:100]).any()


def test_the_retriever_example_refuses_files_it_cannot_use(
    numpy_exact: plugins.Registration, tmp_path: Path
) -> None:
    def fresh(metric: str = "ip", dimension: int = 8) -> Retriever:
        return plugins.build_plugin(
            "retrievers", {"name": "numpy-exact", "metric": metric}, dimension
        )

    built = fresh()
    built.build(np.ones((4, 8), np.float32), np.arange(4))
    built.save(tmp_path / "ok.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an index")
    for retriever, path in (
        (fresh(), tmp_path / "missing.npz"),
        (fresh(), tmp_path / "junk.npz"),
        (fresh("l2"), tmp_path / "ok.npz"),
        (fresh(dimension=9), tmp_path / "ok.npz"),
    ):
        with pytest.raises(IndexFileError):
            retriever.load(path)


def test_the_options_example_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from retro_platform.protocols import BASE_DIR, result_options, stored_options

    [block] = [b for b in code_blocks("python") if "class MyRetrieverOptions" in b]
    module = types.ModuleType("doc_options")  # pydantic resolves annotations in the module
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(block, module.__dict__)
    model = module.MyRetrieverOptions
    options = model.model_validate({"codebook": "books/a.bin"}, context={BASE_DIR: tmp_path})
    assert options.codebook == tmp_path / "books" / "a.bin"
    assert "threads" not in result_options(options) and "probes" in result_options(options)
    assert "probes" not in stored_options(options) and "lists" in stored_options(options)
    with pytest.raises(ValidationError, match="extra"):
        model.model_validate({"prbes": 3})


# ---- every hook and every public protocol member is documented ------------------------------

PROTOCOLS = (Retriever, Embedder, Tokenizer, CorpusReader, PositionalEncoding)


def public_members(cls: type) -> list[str]:
    """What a plugin author implements or overrides: the class's own public methods and
    properties, and its public class variables (``Options``, ``file_suffix``, ...)."""
    return [
        name
        for name, value in vars(cls).items()
        if not name.startswith("_")
        and (
            inspect.isfunction(value)
            or isinstance(value, property)
            or not callable(value)
            or inspect.isclass(value)
        )
    ]


def test_public_members_are_found() -> None:
    assert "search" in public_members(Retriever) and "size" in public_members(Retriever)
    assert "file_suffix" in public_members(Retriever)
    assert {"embed", "rotate", "bias"} <= set(public_members(PositionalEncoding))


@pytest.mark.parametrize(
    "qualified",
    [f"{cls.__name__}.{name}" for cls in PROTOCOLS for name in public_members(cls)],
)
def test_every_protocol_member_is_documented(qualified: str) -> None:
    assert f"`{qualified}" in TEXT, f"docs/plugins.md does not document `{qualified}`"


def test_cli_reference_matches_the_commands_help():
    from retro_platform.cli_reference import render

    written = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert written == render(), "regenerate: python -m retro_platform.cli_reference > docs/cli.md"


def test_every_experiment_file_key_is_documented() -> None:
    from retro_platform.config.experiment import (
        TABLES,
        ExperimentTable,
        RetrievalTable,
        StoreTable,
    )
    from retro_platform.config.runner_tables import (
        EvalTable,
        GenerateTable,
        MlflowTable,
        ModelTable,
        TrainTable,
    )

    text = (DOC.parent / "experiment-file.md").read_text()
    tables = list(TABLES)
    for table in tables:
        assert f"[{table}]" in text, f"docs/experiment-file.md does not mention [{table}]"
    for model, table in (
        (ExperimentTable, "experiment"),
        (StoreTable, "store"),
        (RetrievalTable, "retrieval"),
        (ModelTable, "model"),
        (TrainTable, "train"),
        (EvalTable, "eval"),
        (GenerateTable, "generate"),
        (MlflowTable, "mlflow"),
    ):
        section = text.split(f"## `[{table}]`", 1)[1].split("\n## ", 1)[0]
        for key in model.model_fields:
            assert f"| `{key}` |" in section, f"[{table}] {key} is not documented"


def test_the_kit_example_passes_against_the_retriever_example(
    numpy_exact: plugins.Registration, tmp_path: Path
) -> None:
    """The conformance-kit block, run by pytest as an author runs it, against the doc's
    retriever: every rule passes, the registry check included."""
    [kit] = [block for block in code_blocks("python") if "RetrieverContract)" in block]
    (tmp_path / "test_numpy_exact.py").write_text(kit)
    report = tmp_path / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         str(tmp_path / "test_numpy_exact.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S,
        env={**os.environ, plugins.LOAD_PLUGINS_ENV: ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    cases = list(ElementTree.parse(report).iter("testcase"))
    assert len(cases) > 30  # two subclasses of the whole retriever contract
    skipped = [case.get("name") for case in cases if case.find("skipped") is not None]
    assert skipped == ["test_registered_name_maps_to_this_factory"]  # the L2 class sets none


def test_the_example_pyproject_has_the_test_extra_the_kit_section_installs() -> None:
    # "pip install -e '.[test]'" on the example's own pyproject.toml must bring pytest
    assert 'pip install -e ".[test]"' in TEXT
    [pyproject] = [tomllib.loads(b) for b in code_blocks("toml") if "[project]" in b]
    extras = pyproject["project"].get("optional-dependencies", {})
    assert any(r.startswith("pytest") for r in extras.get("test", [])), extras
