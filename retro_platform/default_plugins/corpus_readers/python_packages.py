"""The ``python-packages`` corpus reader: the source files of installed Python distributions.

A distribution is found by name with ``importlib.metadata`` (on ``sys.path``, or in the folders
of ``paths``) and its files are the ones its installer recorded (``RECORD``). Where that list
holds none of its sources (no list at all, or an editable install, which records only its
import hook), the files are those of its top-level modules and packages, found as ``import``
would find them. The globs select by the path inside the distribution
(``transformers/models/bert/modeling_bert.py``); a document's id is that path after the
distribution's name as given, and its metadata holds the distribution's version.

Identical files are read once (``dedupe``): a file with the same bytes as an earlier one in the
reading order becomes a skipped document, so a document held out for validation is never a byte
copy of one in the retrieval database (packages ship vendored and generated copies).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import metadata
from importlib.machinery import PathFinder
from importlib.util import find_spec
from pathlib import Path

from pydantic import Field, field_validator

from retro_platform.default_plugins.corpus_readers.text_files import (
    glob_regex,
    read_document,
    valid_globs,
)
from retro_platform.errors import ConfigError, did_you_mean
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import CorpusReader, PluginOptions, RelativePath, SourceDocument

DEFAULT_INCLUDE = ("**/*.py",)
DEFAULT_EXCLUDE = ("**/tests/**", "**/test/**", "**/test_*.py", "**/conftest.py")

#: The problem of a skipped copy: one constant, so that ingest counts copies under one reason.
DUPLICATE = "same text as an earlier file"

#: A distribution name as PEP 508 allows it (no ``/``, so it cannot break an id).
NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


class PythonPackagesOptions(PluginOptions):
    packages: tuple[str, ...] = Field(
        min_length=1, description="installed distributions, by name, e.g. ['transformers']"
    )
    include: tuple[str, ...] = Field(
        DEFAULT_INCLUDE, description="globs over paths inside a distribution; `**/` spans folders"
    )
    exclude: tuple[str, ...] = Field(
        DEFAULT_EXCLUDE, description="globs of files to leave out (test folders by default)"
    )
    max_files: int | None = Field(
        None, ge=1, description="read this many files, evenly spaced in sorted order"
    )
    dedupe: bool = Field(True, description="skip a file with the same bytes as an earlier one")
    paths: tuple[RelativePath, ...] | None = Field(
        None, description="folders to find the distributions in, instead of sys.path"
    )

    @field_validator("include", "exclude")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        return valid_globs(patterns)

    @field_validator("packages")
    @classmethod
    def _names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        seen: dict[str, str] = {}
        for name in names:
            if not NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a distribution name")
            key = re.sub(r"[-_.]+", "-", name).lower()  # how pip compares names
            if key in seen:
                raise ValueError(f"{name!r} names the same distribution as {seen[key]!r}")
            seen[key] = name
        return names


@dataclass(frozen=True)
class _Source:
    """One selected file: its id, where it is, and the metadata its document carries."""

    external_id: str
    file: Path
    metadata: dict[str, str]


class PythonPackagesReader(CorpusReader):
    """Reads the files of ``packages``; ids like ``transformers/transformers/__init__.py``."""

    Options = PythonPackagesOptions
    options: PythonPackagesOptions

    def __init__(self, options: PythonPackagesOptions) -> None:
        super().__init__(options)
        self._include = [glob_regex(pattern) for pattern in options.include]
        self._exclude = [glob_regex(pattern) for pattern in options.exclude]
        #: where distributions and their modules are looked for (None: sys.path, as import)
        self._search = None if options.paths is None else [str(path) for path in options.paths]

    def check(self) -> None:
        for name in self.options.packages:
            if self._distribution(name) is None:
                raise ConfigError(
                    f"[corpus] packages: no distribution {name!r} is installed {self._where()}"
                    f"{did_you_mean(name, self._installed())}"
                )
        if not self._sources():
            raise ConfigError(
                f"[corpus] include: no file of {', '.join(self.options.packages)} matches "
                f"{list(self.options.include)}"
                + (f" and none of exclude {list(self.options.exclude)}" if self._exclude else "")
            )

    def documents(self) -> Iterator[SourceDocument]:
        seen: set[bytes] = set()  # digests of what was read: 32 bytes a file, not the texts
        for source in self._sources():
            document = read_document(source.file, source.external_id)
            # blank files (empty __init__.py) are many and alike: the core counts them as empty
            if self.options.dedupe and document.problem is None and document.data.strip():
                digest = hashlib.sha256(document.data).digest()
                if digest in seen:
                    document = SourceDocument(source.external_id, b"", problem=DUPLICATE)
                seen.add(digest)
            yield replace(document, metadata=source.metadata)

    def describe(self) -> str:
        found = []
        for name in self.options.packages:
            distribution = self._distribution(name)
            found.append(f"{name} {distribution.version}" if distribution else f"{name} (missing)")
        return f"the files of {', '.join(found)} {self._where()}"

    def count_hint(self) -> int | None:
        return len(self._sources())  # file lists and names only: cheap next to reading

    def wanted(self, relative: str) -> bool:
        """Whether a POSIX path inside a distribution is part of the corpus."""
        return any(p.fullmatch(relative) for p in self._include) and not any(
            p.fullmatch(relative) for p in self._exclude
        )

    def _sources(self) -> list[_Source]:
        """The selected files of every distribution, sorted by id; ``max_files`` keeps an even
        spread over them all (the first N would be one package's first folders)."""
        found = []
        for name in self.options.packages:
            distribution = self._distribution(name)
            if distribution is None:  # check() has said so
                continue
            meta = {"distribution": distribution.name, "version": distribution.version}
            for relative, file in _files(distribution, self._search):
                if self.wanted(relative):
                    found.append(_Source(f"{name}/{relative}", file, meta))
        found.sort(key=lambda source: source.external_id)
        count = self.options.max_files
        if count is not None and count < len(found):
            found = [found[i * len(found) // count] for i in range(count)]
        return found

    def _distribution(self, name: str) -> metadata.Distribution | None:
        """The first distribution of this name on the search path, as ``import`` would use."""
        return next(iter(metadata.distributions(name=name, **self._path())), None)

    def _installed(self) -> set[str]:
        names = (d.metadata["Name"] for d in metadata.distributions(**self._path()))
        return {name for name in names if name}

    def _path(self) -> dict[str, list[str]]:
        # importlib.metadata's own default is sys.path; an explicit None would search nothing
        return {} if self._search is None else {"path": self._search}

    def _where(self) -> str:
        return "on sys.path" if self._search is None else f"in {', '.join(self._search)}"


def _files(distribution: metadata.Distribution, search: list[str] | None) -> list[tuple[str, Path]]:
    """``(path inside the distribution, file)`` per file it installed: its recorded files, or,
    when those hold none of its sources, its top-level modules' files."""
    return _recorded(distribution) or _imported(distribution, search)


def _recorded(distribution: metadata.Distribution) -> list[tuple[str, Path]]:
    """The recorded files in the distribution's folder, less its metadata folder, bytecode and
    an editable install's import hook (scripts and data outside the folder start with ``..``)."""
    found = []
    for path in distribution.files or ():
        parts = path.parts
        if not parts or path.is_absolute() or parts[0] == ".." or "__pycache__" in parts:
            continue
        if parts[0].endswith((".dist-info", ".egg-info")) or parts[0].startswith("__editable__"):
            continue
        if parts[-1].endswith(".pth"):
            continue
        found.append((path.as_posix(), Path(path.locate())))
    return found


def _imported(
    distribution: metadata.Distribution, search: list[str] | None
) -> list[tuple[str, Path]]:
    """The files of the distribution's top-level modules and packages (``top_level.txt``, else
    its name as a module name), located as ``import`` would, without importing them."""
    tops = (distribution.read_text("top_level.txt") or "").split()
    tops = tops or [re.sub(r"[-.]+", "_", distribution.name).lower()]
    found: list[tuple[str, Path]] = []
    for top in tops:
        if not top.isidentifier():
            continue
        try:  # a top-level name is found, not imported; the editable installs' finders apply
            spec = find_spec(top) if search is None else PathFinder.find_spec(top, search)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:  # a package; a namespace package has several
            for folder in spec.submodule_search_locations:
                found += _walk(Path(folder), top)
        elif spec.origin and Path(spec.origin).is_file():  # a module (not a built-in one)
            found.append((Path(spec.origin).name, Path(spec.origin)))
    return found


def _walk(folder: Path, top: str) -> list[tuple[str, Path]]:
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        relative = Path(top, Path(current).relative_to(folder))
        found += [((relative / name).as_posix(), Path(current, name)) for name in files]
    return found


@hookimpl
def register_corpus_readers(register):
    register("python-packages", PythonPackagesReader)
