"""The files of a new plugin package (``retro-platform plugin new``), from the templates in
``plugin_templates/``: a ``pyproject.toml`` with the entry point, a README, one module with a
small working implementation, and tests that run the conformance kit against it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from retro_platform.errors import ConfigError


@dataclass(frozen=True)
class Kind:
    noun: str  # what one is called in text
    suffix: str  # of the class name
    usage: str  # the experiment-file lines that pick it
    dependencies: tuple[str, ...]


KINDS: dict[str, Kind] = {
    "retriever": Kind("retriever", "Retriever", '[retriever]\nname = "$name"', ("numpy>=1.24",)),
    "embedder": Kind("embedder", "Embedder", '[embedder]\nname = "$name"', ("numpy>=1.24",)),
    "tokenizer": Kind("tokenizer", "Tokenizer", '[tokenizer]\nname = "$name"', ("numpy>=1.24",)),
    "corpus": Kind("corpus reader", "Reader", '[corpus]\nname = "$name"\npath = "texts"', ()),
    "positional-encoding": Kind(
        "positional encoding", "Encoding", '[model]\npositional_encoding = "$name"', ("torch>=2.3",)
    ),
}

#: lowercase words of letters and digits joined by '-', starting with a letter
NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def render(name: str, kind: str) -> dict[str, str]:
    """``{relative path: text}`` of the package ``retro-platform-<name>`` for ``kind``."""
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"plugin name {name!r}: use lowercase letters, digits and '-', starting with a "
            "letter (e.g. my-index)"
        )
    spec = KINDS[kind]
    module = f"retro_platform_{name.replace('-', '_')}"
    camel = "".join(part.capitalize() for part in name.split("-"))
    values = {
        "name": name,
        "dist": f"retro-platform-{name}",
        "module": module,
        "cls": camel if camel.endswith(spec.suffix) else camel + spec.suffix,
        "noun": spec.noun,
        "usage": Template(spec.usage).substitute(name=name),
        "dependencies": ", ".join(f'"{d}"' for d in spec.dependencies),
    }
    values["dependencies"] = values["dependencies"] or '"pydantic>=2.5"'
    return {
        "pyproject.toml": _template("pyproject.toml", values),
        "README.md": _template("README.md", values),
        f"{module}.py": _template(f"{kind}.py", values),
        f"tests/test_{name.replace('-', '_')}.py": _template(f"{kind}_test.py", values),
    }


def write(name: str, kind: str, directory: Path) -> Path:
    """Write the package into ``directory / "retro-platform-<name>"``, which must not exist."""
    files = render(name, kind)
    root = directory / f"retro-platform-{name}"
    if root.exists():
        raise ConfigError(f"{root} already exists: choose another name or --directory")
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def _template(stem: str, values: dict[str, str]) -> str:
    text = (
        resources.files(__package__)
        .joinpath("plugin_templates", f"{stem}.tmpl")
        .read_text(encoding="utf-8")
    )
    return Template(text).substitute(values)
