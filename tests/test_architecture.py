"""The architecture is checked, not assumed: ``lint-imports`` keeps the contracts of
pyproject.toml (docs/architecture.md) on the package as it is, and finds each kind of breach
planted in a copy of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # the tree's own package comes first on the path, before the installed (editable) one
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True
    )


def test_the_package_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout
    for contract in (LAYERS, BACKENDS, MODEL, CYCLES):
        assert contract in result.stdout


LAYERS = "The pipeline: each layer imports only the layers below it"
BACKENDS = "The core imports no backend"
MODEL = "The model knows nothing of the store"
CYCLES = "No import cycles among the modules of any package"


@pytest.mark.parametrize(
    ("module", "planted", "contract", "chain"),
    [
        pytest.param(
            "store/models.py",
            "from retro_platform.runner.folder import DONE",
            LAYERS,
            "retro_platform.store.models -> retro_platform.runner.folder",
            id="upward",
        ),
        pytest.param(
            "index/build.py",
            "import faiss",
            BACKENDS,
            "retro_platform.index.build -> faiss",
            id="backend-in-the-core",
        ),
        pytest.param(
            "model/feed_forward.py",
            "from retro_platform.store.models import Chunk",
            MODEL,
            "retro_platform.model.feed_forward -> retro_platform.store.models",
            id="model-reads-the-store",
        ),
        pytest.param(
            "evaluation/overlap.py",
            "from retro_platform.evaluation.bpb import EvalResult",
            CYCLES,
            "No cycles are allowed in retro_platform.evaluation",
            id="cycle",
        ),
    ],
)
def test_a_planted_breach_breaks_a_contract(
    tmp_path: Path, module: str, planted: str, contract: str, chain: str
) -> None:
    shutil.copytree(
        ROOT / "retro_platform", tmp_path / "retro_platform", ignore=shutil.ignore_patterns("*.pyc")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / "retro_platform" / module
    future = "from __future__ import annotations\n"
    text = path.read_text(encoding="utf-8")
    assert future in text
    path.write_text(text.replace(future, f"{future}{planted}\n", 1), encoding="utf-8")

    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken and chain in broken
