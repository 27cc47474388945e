"""The ``python-stdlib`` corpus reader: the running interpreter's standard-library sources.

The quickstart corpus: real code and docstrings present wherever Python is, about 730 files
and 12 MB outside the test suites on CPython 3.11. Test folders are left out by default (they
are half the files and mostly repetitive fixtures), and so are installed packages
(``site-packages``), the build configuration (``config-*``) and ``__phello__``, a test fixture
of frozen modules.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from retro_platform.default_plugins.corpus_readers.text_files import read_document
from retro_platform.errors import ConfigError, did_you_mean
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import CorpusReader, PluginOptions, SourceDocument

TEST_FOLDERS = frozenset({"test", "tests", "idle_test"})
SKIPPED_FOLDERS = frozenset({"site-packages", "dist-packages", "__pycache__", "__phello__"})


class PythonStdlibOptions(PluginOptions):
    include_tests: bool = Field(False, description="also read test, tests and idle_test folders")
    max_files: int | None = Field(
        None, ge=1, description="read this many files, evenly spaced in sorted order"
    )
    packages: tuple[str, ...] | None = Field(
        None, description="only these top-level modules and packages, e.g. ['json', 'email']"
    )


class PythonStdlibReader(CorpusReader):
    """Reads ``*.py`` under ``sysconfig.get_paths()["stdlib"]``; ids like ``json/decoder.py``."""

    Options = PythonStdlibOptions
    options: PythonStdlibOptions

    def __init__(self, options: PythonStdlibOptions) -> None:
        super().__init__(options)
        self.root = Path(sysconfig.get_paths()["stdlib"])

    def check(self) -> None:
        if not (self.root / "os.py").is_file():
            raise ConfigError(
                f"[corpus] name: this Python has no standard-library sources at {self.root}"
            )
        available = {top for top, _ in self._all_files()}
        for package in self.options.packages or ():
            if package not in available:
                raise ConfigError(
                    f"[corpus] packages: the standard library has no module {package!r}"
                    f"{did_you_mean(package, available)}"
                )

    def documents(self) -> Iterator[SourceDocument]:
        for external_id in self._files():
            yield read_document(self.root / external_id, external_id)

    def describe(self) -> str:
        version = ".".join(map(str, sys.version_info[:2]))
        return f"the Python {version} standard library at {self.root}"

    def count_hint(self) -> int | None:
        return len(self._files())

    def _files(self) -> list[str]:
        """The selected ids, sorted; ``max_files`` keeps an even spread over the whole library
        (the first N in sorted order would be mostly ``asyncio``)."""
        packages = self.options.packages
        files = [path for top, path in self._all_files() if packages is None or top in packages]
        count = self.options.max_files
        if count is not None and count < len(files):
            files = [files[i * len(files) // count] for i in range(count)]
        return files

    def _all_files(self) -> list[tuple[str, str]]:
        """``(top-level module, POSIX path relative to the root)`` per source file, sorted."""
        skipped = SKIPPED_FOLDERS if self.options.include_tests else SKIPPED_FOLDERS | TEST_FOLDERS
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d not in skipped and not d.startswith("config-")]
            relative = Path(folder).relative_to(self.root)
            for name in files:
                if name.endswith(".py"):
                    path = (relative / name).as_posix()
                    found.append((relative.parts[0] if relative.parts else name[:-3], path))
        return sorted(found, key=lambda item: item[1])


@hookimpl
def register_corpus_readers(register):
    register("python-stdlib", PythonStdlibReader)
