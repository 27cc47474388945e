"""``retro-platform plugin new``: each kind's package installs with pip, its entry point is
found by the plugin loader, and the conformance-kit tests it comes with pass as generated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.cli.plugin_template import KINDS
from tests.limits import HANG_S

ROOT = Path(__file__).resolve().parents[2]


def name_of(kind: str) -> str:
    return f"kit-{kind}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Every kind generated into one folder and pip-installed into one target (one pip run,
    one ``plugins --json`` and one pytest run for all five: each costs seconds)."""
    folder = tmp_path_factory.mktemp("plugins")
    for kind in KINDS:
        result = CliRunner().invoke(
            cli, ["plugin", "new", name_of(kind), "--kind", kind, "--directory", str(folder)]
        )
        assert result.exit_code == 0, result.output
    packages = sorted(str(path) for path in folder.iterdir())
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(target), *packages], check=True, timeout=HANG_S)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    dists = ",".join(f"retro-platform-{name_of(kind)}" for kind in KINDS)
    listed = subprocess.run(
        [sys.executable, "-m", "retro_platform.cli", "plugins", "--json"],
        env={**env, "RETRO_PLATFORM_LOAD_PLUGINS": dists},
        capture_output=True, text=True, timeout=HANG_S, check=True,
    )  # fmt: skip
    report = folder / "report.xml"
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         *(f"{package}/tests" for package in packages)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=HANG_S,
    )  # fmt: skip
    return {
        "plugins": json.loads(listed.stdout),
        "cases": list(ElementTree.parse(report).iter("testcase")),
        "output": tested.stdout + tested.stderr,
        "target": target,
    }


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_generated_package_installs_with_its_entry_point(generated, kind: str) -> None:
    name = name_of(kind)
    module = f"retro_platform_{name.replace('-', '_')}"
    assert (generated["target"] / f"{module}.py").is_file()
    found = [p for p in generated["plugins"] if p["distribution"] == f"retro-platform-{name}"]
    assert len(found) == 1, generated["plugins"]
    assert found[0]["name"] == name and found[0]["module"] == module
    assert [name] in found[0]["registers"].values()


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_generated_tests_pass_as_generated(generated, kind: str) -> None:
    module = f"test_{name_of(kind).replace('-', '_')}"
    cases = [case for case in generated["cases"] if module in case.get("classname")]
    assert len(cases) > 5, generated["output"]  # the whole contract ran, not an empty module
    failed = [case.get("name") for case in cases if case.find("failure") is not None]
    broken = [case.get("name") for case in cases if case.find("error") is not None]
    assert not failed and not broken, generated["output"]
    registered = [case for case in cases if case.get("name").startswith("test_registered_name")]
    assert any(case.find("skipped") is None for case in registered), (
        "the entry point was found: the registry check ran"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("My_Plugin", "use lowercase letters, digits and '-'"),
        ("2fast", "starting with a letter"),
        ("taken", "already exists"),
        # a built-in's name: the new package would be shadowed and fail its own kit
        ("hashing", "embedder 'hashing' is already registered by plugin"),
    ],
)
def test_bad_names_and_existing_folders_are_one_line_errors(
    tmp_path: Path, name: str, message: str
) -> None:
    (tmp_path / "retro-platform-taken").mkdir()
    result = CliRunner().invoke(
        cli, ["plugin", "new", name, "--kind", "embedder", "--directory", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and message in result.output
    assert result.output.count("\n") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["retro-platform-taken"]


def test_a_run_uses_all_five_generated_plugins(generated, tmp_path: Path) -> None:
    """From ``plugin new`` to ``retro-platform run``: an experiment made only of the generated
    plugins trains and evaluates, and its MLflow run names their distributions."""
    from tests.pipeline.helpers import toml_text, write_stdlib_corpus
    from tests.runner.helpers import runs_of
    from tests.training.helpers import tables

    write_stdlib_corpus(tmp_path / "corpus")
    config = tables(
        tmp_path / "store",
        experiment={"name": "runner-test", "seed": 3},
        corpus={"name": name_of("corpus"), "path": "corpus", "suffix": ".py"},
        tokenizer={"name": name_of("tokenizer")},
        embedder={"name": name_of("embedder")},
        retriever={"name": name_of("retriever")},
        model={"positional_encoding": name_of("positional-encoding")},
        train={"steps": 4, "checkpoint_every": 4},
    )
    experiment = tmp_path / "experiment.toml"
    experiment.write_text(toml_text(config))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(generated["target"]), str(ROOT)]),
        "RETRO_PLATFORM_LOAD_PLUGINS": ",".join(f"retro-platform-{name_of(k)}" for k in KINDS),
    }
    done = subprocess.run(
        [sys.executable, "-m", "retro_platform.cli", "run", str(experiment), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=HANG_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [run] = runs_of(experiment)
    assert run.info.status == "FINISHED"
    for table, kind in (("corpus", "corpus"), ("retriever", "retriever"),
                        ("positional_encoding", "positional-encoding")):  # fmt: skip
        assert run.data.tags[f"retro.{table}.distribution"] == f"retro-platform-{name_of(kind)}"
