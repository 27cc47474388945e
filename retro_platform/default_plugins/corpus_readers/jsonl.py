"""The ``jsonl`` corpus reader: one document per line of JSON Lines files.

Files are read line by line in binary, so memory holds one line whatever the file's size, and
each line is decoded on its own: a line that is not UTF-8, not JSON, not an object or has no
text becomes a document with ``problem`` set (counted and reported by the core) and the next
line is read as usual. ``.jsonl.gz`` files are decompressed as they stream.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from retro_platform.errors import ConfigError
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import CorpusReader, PluginOptions, RelativePath, SourceDocument

SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz")
GLOB_CHARACTERS = frozenset("*?[")
JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


class JsonlOptions(PluginOptions):
    path: RelativePath = Field(
        description="a JSON Lines file, a folder (its *.jsonl, *.ndjson, *.jsonl.gz files, "
        "recursively) or a glob such as data/*.jsonl"
    )
    text_field: str = Field("text", min_length=1, description="the field holding the text")
    id_field: str | None = Field(
        "id",
        description='the field holding a document id; "" (or missing on a line): '
        "the id is <file>:<line number>",
    )


class JsonlReader(CorpusReader):
    """Reads JSON Lines files; ``external_id`` is the id field or ``<file>:<line>``."""

    Options = JsonlOptions
    options: JsonlOptions

    def check(self) -> None:
        path = self.options.path
        if _is_glob(path):
            if not self._files():
                raise ConfigError(f"[corpus] path: no file matches {path}")
        elif not path.exists():
            raise ConfigError(f"[corpus] path: corpus path {path} does not exist")
        elif not self._files():
            raise ConfigError(f"[corpus] path: no {', '.join(SUFFIXES)} file under {path}")

    def documents(self) -> Iterator[SourceDocument]:
        for name, file in self._files():
            yield from self._read(name, file)

    def describe(self) -> str:
        return f"JSON Lines in {self.options.path}"

    def _files(self) -> list[tuple[str, Path]]:
        """``(name in ids, file)`` sorted by name; names are relative to the folder or to the
        part of a glob before its first wildcard."""
        path = self.options.path
        if path.is_file():
            return [(path.name, path)]
        if path.is_dir():
            root, files = path, path.rglob("*")
            files = (file for file in files if file.name.endswith(SUFFIXES))
        elif _is_glob(path):
            first = next(i for i, part in enumerate(path.parts) if GLOB_CHARACTERS & set(part))
            root = Path(*path.parts[:first])
            files = root.glob("/".join(path.parts[first:]))
        else:
            return []
        found = [(file.relative_to(root).as_posix(), file) for file in files if file.is_file()]
        return sorted(found, key=lambda item: item[0])

    def _read(self, name: str, file: Path) -> Iterator[SourceDocument]:
        number = 0
        try:
            with (gzip.open if file.name.endswith(".gz") else open)(file, "rb") as stream:
                for number, line in enumerate(stream, start=1):
                    if line.strip():  # blank lines (a trailing one, say) are not documents
                        yield self._document(line, f"{name}:{number}", first=number == 1)
        except (OSError, EOFError, zlib.error) as error:  # unreadable, or a broken .gz
            reason = getattr(error, "strerror", None) or error
            where = f"{name}:{number + 1}" if number else name
            yield SourceDocument(where, b"", problem=f"cannot read: {reason}")

    def _document(self, line: bytes, where: str, *, first: bool) -> SourceDocument:
        """One line as a document; ``where`` (``<file>:<line>``) is its id when it has none."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            return SourceDocument(where, b"", problem=f"line is not UTF-8 ({error.reason})")
        try:
            record: Any = json.loads(text.removeprefix("\ufeff") if first else text)
        except ValueError as error:  # JSONDecodeError is a ValueError
            return SourceDocument(where, b"", problem=f"line is not valid JSON: {error}")
        except RecursionError:
            return SourceDocument(where, b"", problem="line is JSON nested too deeply")
        if not isinstance(record, dict):
            return SourceDocument(where, b"", problem="line is not a JSON object")
        id_field, field = self.options.id_field, self.options.text_field
        external_id = (_id(record.get(id_field)) if id_field else None) or where
        value = record.get(field)
        if value is None:
            return SourceDocument(external_id, b"", problem=f"line has no {field!r} field")
        if not isinstance(value, str):
            kind = JSON_TYPES.get(type(value), type(value).__name__)
            return SourceDocument(external_id, b"", problem=f"{field!r} is {kind}, not a string")
        try:
            return SourceDocument(external_id, value.encode("utf-8"))
        except UnicodeEncodeError:  # JSON can escape a lone surrogate, which UTF-8 cannot hold
            return SourceDocument(external_id, b"", problem="text holds an unpaired surrogate")


def _id(value: Any) -> str | None:
    """A usable id: a non-empty string, or an integer written in decimal."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _is_glob(path: Path) -> bool:
    return any(GLOB_CHARACTERS & set(part) for part in path.parts)


@hookimpl
def register_corpus_readers(register):
    register("jsonl", JsonlReader)
