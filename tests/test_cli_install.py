"""``retro-platform install`` and ``uninstall`` with real pip, in a throwaway environment.

The environment is a new virtual environment that sees this one's packages (a ``.pth`` file
adds our site-packages as a site directory), so that pip installs into it, offline, and
nothing here changes the environment the tests run in.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

from tests.limits import HANG_S

pytestmark = pytest.mark.slow

BROKEN = "raise ImportError('libfancy.so: cannot open shared object file')\n"

WORKING = """
from retro_platform import hookimpl
from retro_platform.default_plugins.retrievers.faiss_flat import FaissFlatRetriever


@hookimpl
def register_retrievers(register):
    register("flat-copy", FaissFlatRetriever)
"""

# pip without build isolation and an index: everything it needs is already installed
PIP_OFFLINE = ("--no-deps", "--no-build-isolation", "--no-index")


def write_plugin(folder: Path, dist: str, source: str) -> Path:
    """A one-module plugin distribution in ``folder``, ready for ``pip install``."""
    module = dist.replace("-", "_")
    root = folder / dist
    root.mkdir()
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    (root / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "2.0"

            [project.entry-points.retro_platform]
            {module.removeprefix("retro_platform_")} = "{module}"

            [tool.setuptools]
            py-modules = ["{module}"]
        """)
    )
    return root


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The throwaway environment's python."""
    root = tmp_path_factory.mktemp("env")
    venv.create(root, with_pip=False)
    [packages] = root.glob("lib/python*/site-packages")
    lines = [f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages()]
    (packages / "our_packages.pth").write_text("".join(lines))
    return root / "bin" / "python"


def cli(python: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **env}
    environ.pop("RETRO_PLATFORM_LOAD_PLUGINS")  # a user's environment: every plugin loads
    environ.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(python), "-m", "retro_platform.cli", *args],
        capture_output=True,
        text=True,
        timeout=HANG_S,
        env=environ,
        cwd=python.parent,
    )


def test_install_reports_plugins_and_uninstall_works_while_one_is_broken(
    environment: Path, tmp_path: Path
) -> None:
    broken = write_plugin(tmp_path, "retro-platform-fancy", BROKEN)
    working = write_plugin(tmp_path, "retro-platform-flatcopy", WORKING)

    done = cli(environment, "install", str(broken), str(working), *PIP_OFFLINE)
    assert done.returncode == 0, done.stderr
    assert "installed plugin 'flatcopy' (retro-platform-flatcopy 2.0): retrievers: flat-copy" in (
        done.stdout
    )
    assert (
        "Warning: installed plugin 'fancy' (retro-platform-fancy 2.0) failed to load: "
        "ImportError: libfancy.so: cannot open shared object file; remove it with: "
        "retro-platform uninstall retro-platform-fancy"
    ) in done.stderr

    # the broken plugin is named by plugins and plugins --json, and the others still load
    listed = cli(environment, "plugins")
    assert listed.returncode == 0
    assert "flat-copy" in listed.stdout
    assert "fancy (retro-platform-fancy 2.0) failed to load: ImportError" in listed.stdout
    info = {
        plugin["name"]: plugin
        for plugin in json.loads(cli(environment, "plugins", "--json").stdout)
    }
    assert info["fancy"]["status"] == "broken" and info["flatcopy"]["status"] == "loaded"

    # disabling it by name silences it
    quiet = cli(environment, "plugins", RETRO_PLATFORM_DISABLE_PLUGINS="fancy")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "fancy (retro-platform-fancy 2.0) is disabled by RETRO_PLATFORM_DISABLE_PLUGINS" in (
        quiet.stdout
    )

    # uninstall works by plugin or distribution name while the plugin is broken
    for name, dist in (("fancy", "retro-platform-fancy"), ("retro-platform-flatcopy", None)):
        gone = cli(environment, "uninstall", name)
        assert gone.returncode == 0, gone.stderr
        assert f"uninstalled {dist or name}" in gone.stdout
    after = json.loads(cli(environment, "plugins", "--json").stdout)
    assert not {"fancy", "flatcopy"} & {plugin["name"] for plugin in after}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("uninstall", "torch"), "'torch' is not an installed retro-platform plugin"),
        (("uninstall", "retro-platform"), "retro-platform is the platform, not a plugin"),
        (("install", "./no-such-folder", *PIP_OFFLINE), "pip install failed (exit code 1)"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    environment: Path, args: tuple[str, ...], message: str
) -> None:
    done = cli(environment, *args)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith(f"Error: {message}")
