"""Small real corpora and experiment files for the pipeline tests."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Any

#: Standard-library modules copied as a small real corpus (a few hundred 64-byte chunks each).
STDLIB_MODULES = ("bisect.py", "colorsys.py", "fnmatch.py", "keyword.py", "shlex.py", "glob.py")


def write_stdlib_corpus(folder: Path, modules: tuple[str, ...] = STDLIB_MODULES) -> Path:
    """Copy a few standard-library sources into ``folder``; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(sysconfig.get_paths()["stdlib"])
    for name in modules:
        (folder / name).write_bytes((root / name).read_bytes())
    return folder


def toml_text(tables: dict[str, dict[str, Any]]) -> str:
    """Render flat tables as TOML (JSON scalars and arrays are valid TOML values)."""
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def write_experiment(
    folder: Path, corpus: Path, database_url: str | None = None, **tables: dict[str, Any]
) -> Path:
    """An experiment file in ``folder``: text files of ``corpus``, byte tokens, 32-token
    chunks, hashing embeddings, exact Faiss search; ``tables`` replace whole tables."""
    config: dict[str, dict[str, Any]] = {
        "experiment": {"name": "pipeline-test"},
        "store": {"path": "store"},
        "corpus": {"name": "text-files", "path": str(corpus), "include": ["**/*.py", "**/*.txt"]},
        "tokenizer": {"name": "bytes"},
        "retrieval": {"chunk_size": 32, "neighbours": 2, "validation_fraction": 0.0},
        "embedder": {"name": "hashing", "dimension": 128},
        "retriever": {"name": "faiss-flat"},
    }
    if database_url is not None:
        config["store"]["url"] = database_url
    config.update(tables)
    path = folder / "experiment.toml"
    path.write_text(toml_text(config))
    return path
