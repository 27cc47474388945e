"""The migrations ship inside the wheel, and an installed (not editable) retro-platform finds
them: the top-level ``migrations/`` folder becomes the package ``retro_platform.migrations``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

from retro_platform.store.migrations import head_revision, migrations_dir

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed_in_pyproject() -> None:
    """The package list is written by hand (see pyproject.toml): a new package must join it."""
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "retro_platform").rglob("__init__.py")
        if "__pycache__" not in init.parts
    } | {"retro_platform.migrations", "retro_platform.migrations.versions"}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    missing = sorted(on_disk - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    assert not sorted(listed - on_disk), "pyproject.toml lists packages that do not exist"


def test_the_installed_package_finds_the_repository_migrations() -> None:
    assert migrations_dir().resolve() == (ROOT / "migrations").resolve()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline from a copy of the sources (the checkout itself is left alone)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for folder in ("retro_platform", "migrations"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md", *(p.name for p in ROOT.glob("LICEN[CS]E*"))):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    [built] = out.glob("retro_platform-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    revisions = sorted(
        f"retro_platform/migrations/versions/{p.name}"
        for p in (ROOT / "migrations" / "versions").glob("*.py")
    )
    expected = {
        "retro_platform/migrations/__init__.py",
        "retro_platform/migrations/env.py",
        "retro_platform/migrations/script.py.mako",
        *revisions,
    }
    assert expected <= names
    assert any(head_revision() in name for name in revisions)
    assert not any(name.startswith("migrations/") for name in names)  # no top-level package


@pytest.mark.slow
def test_an_installed_wheel_creates_a_store(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile",
         "--quiet", "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    script = textwrap.dedent(
        f"""
        import retro_platform.store.database as database
        import retro_platform.store.migrations as migrations
        assert database.__file__.startswith({str(target)!r}), database.__file__
        print(migrations.migrations_dir())
        store = database.open_store("sqlite:///{tmp_path}/store/retro.db", "{tmp_path}/store")
        print(migrations.current_revision("sqlite:///{tmp_path}/store/retro.db"))
        store.close()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    located, revision = result.stdout.split()
    assert Path(located) == target / "retro_platform" / "migrations"
    assert revision == head_revision()
