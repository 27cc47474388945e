"""The ``text-files`` corpus reader: every file under a folder whose path matches the globs.

A document is one file, its id the path relative to ``path`` in POSIX form, so ids are the same
on every OS and across runs. Files are listed first (names only), sorted, then read one at a
time: the order is stable and memory holds one document.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field, field_validator

from retro_platform.errors import ConfigError
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import CorpusReader, PluginOptions, RelativePath, SourceDocument

DEFAULT_INCLUDE = ("**/*.txt", "**/*.md", "**/*.rst", "**/*.py")


class TextFilesOptions(PluginOptions):
    path: RelativePath = Field(description="a folder (read recursively) or a single file")
    include: tuple[str, ...] = Field(
        DEFAULT_INCLUDE, description="globs over paths relative to `path`; `**/` spans folders"
    )
    exclude: tuple[str, ...] = Field((), description="globs of files to leave out")
    follow_symlinks: bool = Field(False, description="read linked files and folders too")

    @field_validator("include", "exclude")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        return valid_globs(patterns)


class TextFilesReader(CorpusReader):
    """Reads the files under ``path`` that match ``include`` and no ``exclude`` glob."""

    Options = TextFilesOptions
    options: TextFilesOptions

    def __init__(self, options: TextFilesOptions) -> None:
        super().__init__(options)
        self._include = [glob_regex(pattern) for pattern in options.include]
        self._exclude = [glob_regex(pattern) for pattern in options.exclude]

    def check(self) -> None:
        path = self.options.path
        if not path.exists():
            raise ConfigError(f"[corpus] path: corpus path {path} does not exist")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"[corpus] path: corpus path {path} is not readable")
        if path.is_dir() and not any(problem is None for _, _, problem in self._listing()):
            raise ConfigError(
                f"[corpus] include: no file under {path} matches {list(self.options.include)}"
                + (f" and none of exclude {list(self.options.exclude)}" if self._exclude else "")
            )

    def documents(self) -> Iterator[SourceDocument]:
        for external_id, file, problem in self._listing():
            if file is None:
                yield SourceDocument(external_id, b"", problem=problem)
            else:
                yield read_document(file, external_id)

    def describe(self) -> str:
        path = self.options.path
        return f"text files under {path}" if path.is_dir() else f"the file {path}"

    def count_hint(self) -> int | None:
        return len(self._listing())  # a walk of names only: cheap next to reading the files

    def wanted(self, relative: str) -> bool:
        """Whether a POSIX path relative to ``path`` is part of the corpus."""
        return any(p.fullmatch(relative) for p in self._include) and not any(
            p.fullmatch(relative) for p in self._exclude
        )

    def _listing(self) -> list[tuple[str, Path | None, str | None]]:
        """``(external_id, file, None)`` per wanted file, ``(id, None, problem)`` per folder
        that could not be listed; sorted by id."""
        root = self.options.path
        if not root.is_dir():  # a single file named on purpose: the globs do not apply
            return [(root.name, root, None)]
        follow = self.options.follow_symlinks
        errors: list[OSError] = []
        seen: set[tuple[int, int]] = set()
        found: list[tuple[str, Path | None, str | None]] = []
        for folder, dirs, files in os.walk(root, onerror=errors.append, followlinks=follow):
            dirs.sort()  # a deterministic walk decides which of two links to a folder is kept
            if follow:  # a link back to an ancestor would otherwise be walked forever
                stat = os.stat(folder)
                if (stat.st_dev, stat.st_ino) in seen:
                    dirs.clear()
                    continue
                seen.add((stat.st_dev, stat.st_ino))
            relative_folder = Path(folder).relative_to(root)
            for name in files:
                file = Path(folder, name)
                relative = (relative_folder / name).as_posix()
                if (follow or not file.is_symlink()) and self.wanted(relative):
                    found.append((relative, file, None))
        for error in errors:  # an unreadable subfolder: reported, the rest is still read
            relative = Path(error.filename).relative_to(root).as_posix() + "/"
            found.append((relative, None, f"cannot list folder: {error.strerror or error}"))
        return sorted(found, key=lambda item: item[0])


def read_document(file: Path, external_id: str) -> SourceDocument:
    """The bytes of ``file`` as is (the core decodes them), or a problem if it cannot be read."""
    try:
        return SourceDocument(external_id, file.read_bytes())
    except OSError as error:  # permissions, a file deleted since listing, a broken link
        return SourceDocument(external_id, b"", problem=f"cannot read: {error.strerror or error}")


def valid_globs(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """``patterns`` unchanged, or a ``ValueError`` naming the first that does not compile (for
    an options model's validator)."""
    for pattern in patterns:
        try:
            glob_regex(pattern)
        except re.error as error:
            raise ValueError(f"invalid glob {pattern!r}: {error}") from None
    return patterns


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob over POSIX relative paths: ``**/`` matches any number of folders (none
    included), ``**`` anything, ``*`` and ``?`` stay within one name, ``[...]`` is a class.

    (``fnmatch`` lets ``*`` cross ``/``, and ``PurePath.full_match`` needs Python 3.13.)
    """
    pattern = pattern.removeprefix("./")
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\").replace("[", "\\[")
            if body.startswith("!"):
                body = "^/" + body[1:]  # a negated class still never matches the separator
            elif body.startswith("^"):
                body = "\\" + body  # a literal caret, as in fnmatch
            out.append(f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


@hookimpl
def register_corpus_readers(register):
    register("text-files", TextFilesReader)
