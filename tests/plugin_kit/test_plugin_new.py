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
    subprocess.run([*pip, "--target", str(target), *packages], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    dists = ",".join(f"retro-platform-{name_of(kind)}" for kind in KINDS)
    listed = subprocess.run(
        [sys.executable, "-m", "retro_platform.cli", "plugins", "--json"],
        env={**env, "RETRO_PLATFORM_LOAD_PLUGINS": dists},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    report = folder / "report.xml"
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         *(f"{package}/tests" for package in packages)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
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
