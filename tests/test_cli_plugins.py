"""``retro-platform plugins`` and the CLI's one-line error contract."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from retro_platform import plugins
from retro_platform.cli import cli
from retro_platform.errors import ConfigError
from tests.limits import HANG_S

BROKEN_IMPORT = "raise ImportError('No module named torch_nightly_only')\n"


@pytest.fixture(autouse=True)
def fresh_plugins() -> Iterator[None]:
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line in a fresh interpreter, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "retro_platform.cli", *args],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )


def test_plugins_table_lists_builtins_with_their_names() -> None:
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    table, not_loaded = result.stdout.split("\n\nNot loaded:\n")
    header, *rows = table.splitlines()
    # the tests' empty allow-list keeps the installed example plugin out, and says so
    assert (
        "  sinusoidal (retro-platform-sinusoidal 0.1.0) is disabled: "
        "RETRO_PLATFORM_LOAD_PLUGINS does not name it"
    ) in not_loaded.splitlines()
    assert header.split() == ["PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS", "REGISTERS"]
    assert len(rows) == len(plugins.DEFAULT_PLUGINS)
    rotary = next(row for row in rows if row.startswith(plugins.DEFAULT_PLUGINS[0]))
    assert "register_positional_encodings" in rotary
    assert rotary.endswith("positional_encodings: rotary")
    assert result.stderr == ""


def test_plugins_json_includes_the_installed_third_party_plugin(third_party_plugins: None) -> None:
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    info = {plugin["name"]: plugin for plugin in json.loads(result.stdout)}
    assert set(info) == {*plugins.DEFAULT_PLUGINS, "sinusoidal", "scann"}  # plugins/ of this repo
    assert info["sinusoidal"] == {
        "name": "sinusoidal",
        "module": "retro_platform_sinusoidal",
        "distribution": "retro-platform-sinusoidal",
        "version": "0.1.0",
        "builtin": False,
        "hooks": ["register_positional_encodings"],
        "registers": {"positional_encodings": ["sinusoidal"]},
        "status": "loaded",
        "reason": None,
    }


def test_retro_platform_error_is_one_line_and_exit_code_2() -> None:
    @cli.command("fail-for-test")
    def fail_for_test() -> None:
        raise ConfigError("[model] positional_encoding: 'rotery'\nis not installed")

    try:
        result = CliRunner().invoke(cli, ["fail-for-test"])
    finally:
        del cli.commands["fail-for-test"]
    assert result.exit_code == 2
    assert result.stderr == "Error: [model] positional_encoding: 'rotery' is not installed\n"
    assert result.stdout == ""


def test_other_exceptions_are_not_swallowed() -> None:
    @cli.command("bug-for-test")
    def bug_for_test() -> None:
        raise KeyError("a bug, not a user error")

    try:
        result = CliRunner().invoke(cli, ["bug-for-test"])
    finally:
        del cli.commands["bug-for-test"]
    assert result.exit_code == 1
    assert isinstance(result.exception, KeyError)


def test_subprocess_broken_plugin_warns_in_one_line_and_exits_0(
    plugin_dist: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin_dist("broken-plugin", BROKEN_IMPORT)
    monkeypatch.delenv(plugins.LOAD_PLUGINS_ENV)

    result = run_cli("plugins", "--json")

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "Warning: plugin 'broken_plugin' (from broken-plugin) failed to load: ImportError: "
        "No module named torch_nightly_only; to disable it, set "
        "RETRO_PLATFORM_DISABLE_PLUGINS=broken-plugin or run: retro-platform uninstall "
        "broken-plugin"
    ]
    info = {plugin["name"]: plugin for plugin in json.loads(result.stdout)}
    assert set(info) == {*plugins.DEFAULT_PLUGINS, "sinusoidal", "scann", "broken_plugin"}
    assert info["broken_plugin"]["status"] == "broken"
    assert info["broken_plugin"]["distribution"] == "broken-plugin"
    assert info["broken_plugin"]["reason"] == (
        "failed to load: ImportError: No module named torch_nightly_only"
    )


def test_subprocess_version_and_usage_error() -> None:
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"retro-platform, version {plugins._own_version()}"
    unknown = run_cli("plugins", "--jsn")
    assert unknown.returncode == 2
    # click's own usage errors keep click's format (usage, hint, error), and its exit code 2
    assert "Error: No such option '--jsn'. Did you mean '--json'?" in unknown.stderr


@pytest.mark.parametrize(
    ("args", "pip_args"),
    [
        (["--no-deps", "-e", "./a"], ["--editable", "./a", "--no-deps"]),
        (["-e", "./a", "--no-deps"], ["--editable", "./a", "--no-deps"]),
        (
            ["-e", "./a", "-e", "./b", "wheel.whl"],
            ["--editable", "./a", "--editable", "./b", "wheel.whl"],
        ),
        (["-U", "name"], ["--upgrade", "name"]),
    ],
)
def test_install_gives_pip_each_editable_folder_with_its_flag(
    monkeypatch: pytest.MonkeyPatch, args: list[str], pip_args: list[str]
) -> None:
    # the -e flag was put before the pass-through arguments, so "install --no-deps -e ./a"
    # ran "pip install --editable --no-deps ./a" and pip took --no-deps for the folder
    from retro_platform.cli import install

    ran: list[list[str]] = []
    monkeypatch.setattr(install, "_pip", ran.append)
    monkeypatch.setattr(install, "_entry_points", dict)
    result = CliRunner().invoke(cli, ["install", *args])
    assert result.exit_code == 0, result.output
    [command] = ran
    assert command[4:] == pip_args


def test_install_without_a_target_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["install"])
    assert result.exit_code == 2 and "Missing argument 'TARGETS...'" in result.output
