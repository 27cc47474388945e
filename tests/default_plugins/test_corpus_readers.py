"""The built-in corpus readers on real files: text-files, jsonl and python-stdlib
(python-packages: test_python_packages.py)."""

from __future__ import annotations

import gzip
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from retro_platform.default_plugins.corpus_readers.text_files import glob_regex
from retro_platform.errors import ConfigError
from retro_platform.plugins import build_plugin, get_registry, plugin_options
from retro_platform.protocols import CorpusReader, SourceDocument

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def reader(base_dir: Path, **table: Any) -> CorpusReader:
    """Build a reader from an experiment-file table, as a stage would."""
    return build_plugin("corpus_readers", table, table_name="corpus", base_dir=base_dir)


def documents(corpus: CorpusReader) -> dict[str, SourceDocument]:
    corpus.check()
    docs = list(corpus.documents())
    ids = [doc.external_id for doc in docs]
    assert len(set(ids)) == len(ids), "ids are unique"
    return {doc.external_id: doc for doc in docs}


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def test_the_built_in_readers_are_registered_by_their_modules() -> None:
    registry = get_registry("corpus_readers")
    for name, module in [
        ("text-files", "text_files"),
        ("jsonl", "jsonl"),
        ("python-stdlib", "python_stdlib"),
        ("python-packages", "python_packages"),
    ]:
        assert registry[name].plugin == f"retro_platform.default_plugins.corpus_readers.{module}"


# --- text-files ------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write(root / "b.md", "# B\n")
    write(root / "a.txt", "alpha\n")
    write(root / "a-b.txt", "dash sorts before slash\n")
    write(root / "a" / "z.txt", "in a folder\n")
    write(root / "sub" / "c.py", "print('c')\n")
    write(root / "sub" / "deep" / "d.rst", "Deep\n====\n")
    write(root / "image.png", b"\x89PNG\r\n")
    write(root / "latin1.txt", b"caf\xe9 \xff\n")
    return root


def test_text_files_reads_matching_files_in_sorted_order(tree: Path) -> None:
    corpus = reader(tree.parent, name="text-files", path="corpus")  # relative to the file
    docs = documents(corpus)
    assert list(docs) == [
        "a-b.txt",
        "a.txt",
        "a/z.txt",
        "b.md",
        "latin1.txt",
        "sub/c.py",
        "sub/deep/d.rst",
    ]
    assert docs["sub/deep/d.rst"].data == b"Deep\n====\n"
    assert all(doc.problem is None for doc in docs.values())
    assert corpus.count_hint() == len(docs)
    assert list(documents(corpus)) == list(docs), "the same order every time"
    assert str(tree) in corpus.describe()


def test_text_files_passes_bytes_through_unchanged(tree: Path) -> None:
    docs = documents(reader(tree, name="text-files", path=".", include=["*.txt"]))
    assert docs["latin1.txt"].data == b"caf\xe9 \xff\n"  # not UTF-8: the core decides


def test_text_files_include_and_exclude_globs(tree: Path) -> None:
    def ids(**globs: Any) -> list[str]:
        return list(documents(reader(tree, name="text-files", path=".", **globs)))

    assert ids(include=["*.txt"]) == ["a-b.txt", "a.txt", "latin1.txt"]  # top level only
    assert ids(include=["**/*.txt"], exclude=["a*.txt"]) == ["a/z.txt", "latin1.txt"]
    assert ids(include=["**"], exclude=["sub/**", "**/*.t?t"]) == ["b.md", "image.png"]
    assert ids(include=["sub/**/*.rst"]) == ["sub/deep/d.rst"]
    assert ids(include=["**/[cd].*"]) == ["sub/c.py", "sub/deep/d.rst"]
    assert ids(include=["**/[!abcl]*.*"]) == ["a/z.txt", "image.png", "sub/deep/d.rst"]


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("**/*.py", "x.py", True),
        ("**/*.py", "a/b/x.py", True),
        ("**/*.py", "x.pyc", False),
        ("*.py", "a/x.py", False),
        ("a/**/b.txt", "a/b.txt", True),
        ("a/**/b.txt", "a/x/y/b.txt", True),
        ("a/**", "a/x/y", True),
        ("?.md", "ab.md", False),
        ("./docs/*.md", "docs/x.md", True),
        ("x+(1).txt", "x+(1).txt", True),
    ],
)
def test_glob_regex(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


def test_text_files_missing_path_is_a_one_line_error(tmp_path: Path) -> None:
    corpus = reader(tmp_path, name="text-files", path="nowhere")
    with pytest.raises(ConfigError) as error:
        corpus.check()
    message = str(error.value)
    assert message == f"[corpus] path: corpus path {tmp_path / 'nowhere'} does not exist"


def test_text_files_folder_without_matches_is_an_error(tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[corpus\] include: no file under .* matches"):
        reader(tree, name="text-files", path=".", include=["**/*.tex"]).check()


def test_text_files_single_file(tree: Path) -> None:
    docs = documents(reader(tree, name="text-files", path="image.png"))
    assert docs == {"image.png": SourceDocument("image.png", b"\x89PNG\r\n")}


def test_text_files_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        reader(tmp_path, name="text-files", path=".", inclde=["*.txt"])
    message = str(error.value)
    assert "unknown option 'inclde' in [corpus] for corpus reader 'text-files'" in message
    assert "did you mean 'include'?" in message
    with pytest.raises(ConfigError, match="path"):
        reader(tmp_path, name="text-files")
    with pytest.raises(ConfigError, match="invalid glob"):
        reader(tmp_path, name="text-files", path=".", exclude=["[z-a]"])


def test_text_files_records_defaults(tmp_path: Path) -> None:
    _, options = plugin_options(
        "corpus_readers", {"name": "text-files", "path": "c"}, base_dir=tmp_path
    )
    assert options.path == tmp_path / "c"
    assert options.include == ("**/*.txt", "**/*.md", "**/*.rst", "**/*.py")
    assert options.exclude == ()
    assert options.follow_symlinks is False


def test_text_files_symlinks(tree: Path, tmp_path: Path) -> None:
    write(tmp_path / "outside" / "o.txt", "linked in\n")
    (tree / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    (tree / "sub" / "loop").symlink_to(tree, target_is_directory=True)  # a cycle
    (tree / "broken.txt").symlink_to(tmp_path / "missing.txt")
    plain = documents(reader(tree, name="text-files", path="."))
    assert "linked/o.txt" not in plain and "broken.txt" not in plain
    followed = documents(reader(tree, name="text-files", path=".", follow_symlinks=True))
    assert followed["linked/o.txt"].data == b"linked in\n"
    assert set(followed) - set(plain) == {"linked/o.txt", "broken.txt"}  # the loop ends
    assert followed["broken.txt"].problem == "cannot read: No such file or directory"
    assert followed["broken.txt"].data == b""


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_text_files_unreadable_file_is_a_problem(tree: Path) -> None:
    (tree / "a.txt").chmod(0)
    try:
        docs = documents(reader(tree, name="text-files", path="."))
    finally:
        (tree / "a.txt").chmod(0o644)
    assert docs["a.txt"].problem == "cannot read: Permission denied"
    assert docs["b.md"].data == b"# B\n"


# --- jsonl -----------------------------------------------------------------------------------

LINES = [
    b'\xef\xbb\xbf{"id": "first", "text": "with a byte-order mark"}',
    b'{"text": "no id: named by its line", "meta": 1}',
    b"",
    b'{"id": 7, "text": "an integer id"}',
    b'{"id": "bad json", "text": ',
    b'["not", "an", "object"]',
    b'{"id": "no-text"}',
    b'{"id": "number", "text": 3}',
    b'{"id": "latin", "text": "caf\xe9"}',
    b'{"id": "surrogate", "text": "\\ud800"}',
    b'{"id": "unicode", "text": "na\xc3\xafve caf\\u00e9 \\u2014 \xe6\x9d\xb1\xe4\xba\xac"}',
    b'{"id": null, "text": "a null id"}',
]


def test_jsonl_bad_lines_become_problems(tmp_path: Path) -> None:
    write(tmp_path / "data.jsonl", b"\n".join(LINES) + b"\n")
    corpus = reader(tmp_path, name="jsonl", path="data.jsonl")
    docs = documents(corpus)
    assert list(docs) == [
        "first",
        "data.jsonl:2",
        "7",
        "data.jsonl:5",
        "data.jsonl:6",
        "no-text",
        "number",
        "data.jsonl:9",
        "surrogate",
        "unicode",
        "data.jsonl:12",
    ]
    assert docs["first"].data == b"with a byte-order mark"
    assert docs["data.jsonl:2"] == SourceDocument("data.jsonl:2", b"no id: named by its line")
    assert docs["unicode"].data == "naïve café — 東京".encode()
    problems = {key: doc.problem for key, doc in docs.items() if doc.problem}
    assert problems == {
        "data.jsonl:5": problems["data.jsonl:5"],
        "data.jsonl:6": "line is not a JSON object",
        "no-text": "line has no 'text' field",
        "number": "'text' is a number, not a string",
        "data.jsonl:9": "line is not UTF-8 (invalid continuation byte)",
        "surrogate": "text holds an unpaired surrogate",
    }
    assert problems["data.jsonl:5"].startswith("line is not valid JSON: Expecting value")
    assert all(docs[key].data == b"" for key in problems)
    assert corpus.count_hint() is None


def test_jsonl_fields_are_options(tmp_path: Path) -> None:
    write(tmp_path / "d.jsonl", '{"key": "k1", "body": "one", "text": "no"}\n{"body": "two"}\n')
    docs = documents(
        reader(tmp_path, name="jsonl", path="d.jsonl", text_field="body", id_field="key")
    )
    assert {key: doc.data for key, doc in docs.items()} == {"k1": b"one", "d.jsonl:2": b"two"}
    docs = documents(reader(tmp_path, name="jsonl", path="d.jsonl", text_field="body", id_field=""))
    assert list(docs) == ["d.jsonl:1", "d.jsonl:2"]


def test_jsonl_folder_and_globs_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "data" / "b.jsonl", '{"text": "b"}\n')
    write(tmp_path / "data" / "a" / "x.ndjson", '{"text": "x"}\n')
    write(tmp_path / "data" / "c.jsonl.gz", gzip.compress(b'{"text": "c1"}\n{"text": "c2"}\n'))
    write(tmp_path / "data" / "notes.txt", "not read")
    docs = documents(reader(tmp_path, name="jsonl", path="data"))
    assert {key: doc.data for key, doc in docs.items()} == {
        "a/x.ndjson:1": b"x",
        "b.jsonl:1": b"b",
        "c.jsonl.gz:1": b"c1",
        "c.jsonl.gz:2": b"c2",
    }
    assert list(docs) == sorted(docs)
    assert list(documents(reader(tmp_path, name="jsonl", path="data/*.jsonl"))) == ["b.jsonl:1"]
    docs = documents(reader(tmp_path, name="jsonl", path="data/**/*.*json*"))
    assert len(docs) == 4


def test_jsonl_truncated_gzip_is_a_problem(tmp_path: Path) -> None:
    whole = gzip.compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(2000)))
    write(tmp_path / "cut.jsonl.gz", whole[: len(whole) // 2])
    docs = list(reader(tmp_path, name="jsonl", path="cut.jsonl.gz").documents())
    assert docs[0] == SourceDocument("cut.jsonl.gz:1", b"line 0")
    assert docs[-1].problem is not None and docs[-1].problem.startswith("cannot read")
    assert all(doc.problem is None for doc in docs[:-1])


def test_jsonl_missing_paths_are_one_line_errors(tmp_path: Path) -> None:
    write(tmp_path / "empty" / "x.txt", "")
    cases = {
        "nope.jsonl": f"[corpus] path: corpus path {tmp_path / 'nope.jsonl'} does not exist",
        "*.jsonl": f"[corpus] path: no file matches {tmp_path / '*.jsonl'}",
        "empty": f"[corpus] path: no .jsonl, .ndjson, .jsonl.gz file under {tmp_path / 'empty'}",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError) as error:
            reader(tmp_path, name="jsonl", path=path).check()
        assert str(error.value) == message
    with pytest.raises(ConfigError, match="text_field"):
        reader(tmp_path, name="jsonl", path="x", text_field="")


def test_jsonl_streams(tmp_path: Path) -> None:
    lines = (json.dumps({"id": i, "text": f"doc {i}"}) for i in range(10_000))
    write(tmp_path / "big.jsonl", "\n".join(lines))
    stream = reader(tmp_path, name="jsonl", path="big.jsonl").documents()
    assert next(stream) == SourceDocument("0", b"doc 0")  # before the rest is read
    assert sum(1 for _ in stream) == 9_999


# --- python-stdlib ---------------------------------------------------------------------------

TEST_PARTS = {"test", "tests", "idle_test", "site-packages"}


def test_python_stdlib_reads_the_standard_library_without_tests(tmp_path: Path) -> None:
    corpus = reader(tmp_path, name="python-stdlib")
    docs = documents(corpus)
    assert 500 < len(docs) < 2000
    assert list(docs) == sorted(docs)
    assert corpus.count_hint() == len(docs)
    assert {"os.py", "json/decoder.py", "asyncio/events.py", "unittest/case.py"} <= set(docs)
    for key, doc in docs.items():
        assert key.endswith(".py") and not TEST_PARTS & set(key.split("/")), key
        assert doc.problem is None, key
    empty = [key for key, doc in docs.items() if not doc.data]  # empty __init__.py: kept
    assert all(key.endswith("__init__.py") for key in empty) and len(empty) < 50
    assert 5_000_000 < sum(len(doc.data) for doc in docs.values()) < 30_000_000
    assert b"def makedirs(" in docs["os.py"].data
    assert "standard library" in corpus.describe()


def test_python_stdlib_options(tmp_path: Path) -> None:
    everything = list(documents(reader(tmp_path, name="python-stdlib")))
    some = list(documents(reader(tmp_path, name="python-stdlib", max_files=20)))
    assert len(some) == 20 and set(some) <= set(everything)
    assert len({key.split("/")[0] for key in some}) > 10, "spread over the library"
    assert some == list(documents(reader(tmp_path, name="python-stdlib", max_files=20)))
    json_only = documents(reader(tmp_path, name="python-stdlib", packages=["json", "os"]))
    assert "os.py" in json_only and "json/__init__.py" in json_only
    assert all(key == "os.py" or key.startswith("json/") for key in json_only)
    with_tests = list(documents(reader(tmp_path, name="python-stdlib", include_tests=True)))
    assert len(with_tests) > len(everything)
    assert any(key.startswith("test/") for key in with_tests)


def test_python_stdlib_unknown_package_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        reader(tmp_path, name="python-stdlib", packages=["jsn"]).check()
    message = str(error.value)
    assert (
        message
        == "[corpus] packages: the standard library has no module 'jsn' (did you mean 'json'?)"
    )
    with pytest.raises(ConfigError, match="max_files"):
        reader(tmp_path, name="python-stdlib", max_files=0)


# --- docs ------------------------------------------------------------------------------------


def test_the_documented_corpus_tables_validate(tmp_path: Path) -> None:
    section = DOCS.read_text().split("\n## Built-in plugins\n", 1)[1]
    section = re.split(r"^## ", section, flags=re.M)[0]
    tables = [
        tomllib.loads(block)["corpus"]
        for block in re.findall(r"^```toml\n(.*?)^```", section, flags=re.S | re.M)
        if "[corpus]" in block
    ]
    names = {table["name"] for table in tables}
    assert names == {"text-files", "jsonl", "python-stdlib", "python-packages"}
    for table in tables:
        plugin_options("corpus_readers", table, table_name="corpus", base_dir=tmp_path)
