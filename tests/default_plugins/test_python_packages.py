"""The ``python-packages`` corpus reader on real installs: two tiny wheels built and installed
with pip into a folder once per module, and the ``transformers`` this environment runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from retro_platform.cli import cli
from retro_platform.cli.common import open_experiment
from retro_platform.corpus.ingest import ingest
from retro_platform.default_plugins.corpus_readers.python_packages import DUPLICATE
from retro_platform.errors import ConfigError
from retro_platform.plugins import build_plugin, plugin_options
from retro_platform.protocols import CorpusReader, SourceDocument
from retro_platform.store.models import Corpus, Document
from tests.pipeline.helpers import toml_text

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"

#: The same bytes twice: ``tinypkg/vendored/original.py`` sorts after, so it is the copy.
COPIED = 'def answer():\n    """The one function of this file, and of its copy."""\n    return 42\n'

TINY = {
    "tinypkg/__init__.py": '"""A tiny package for the python-packages tests."""\n',
    "tinypkg/original.py": COPIED,
    "tinypkg/vendored/__init__.py": "",
    "tinypkg/vendored/original.py": COPIED,
    "tinypkg/gen/__init__.py": "",
    **{f"tinypkg/gen/m{i:02}.py": f"VALUE = {i}  # generated module {i}\n" for i in range(12)},
    "tinypkg/tests/__init__.py": "",
    "tinypkg/tests/test_original.py": "def test_answer():\n    assert True\n",
}
#: What an ingest of retro-test-tiny keeps: no tests, no copy, no blank __init__.py.
TINY_STORED = ["__init__.py", *(f"gen/m{i:02}.py" for i in range(12)), "original.py"]

SINGLE = {"tinymod.py": '"""A distribution that installs one module, not a package."""\n'}


def project(folder: Path, name: str, version: str, files: dict[str, str], setuptools: str) -> Path:
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n[tool.setuptools]\n{setuptools}\n'
    )
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that ``pip install --target`` filled with ``retro-test-tiny`` 1.2.3 (a package)
    and ``retro-test-single`` 0.1 (one module), each built into a wheel by pip, offline."""
    sources = tmp_path_factory.mktemp("sources")
    packages = '["tinypkg", "tinypkg.vendored", "tinypkg.gen", "tinypkg.tests"]'
    tiny = project(sources / "tiny", "retro-test-tiny", "1.2.3", TINY, f"packages = {packages}")
    single = project(
        sources / "single", "retro-test-single", "0.1", SINGLE, 'py-modules = ["tinymod"]'
    )
    wheels, target = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir",
         str(wheels), str(tiny), str(single)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*pip, "install", "--no-index", "--no-deps", "--target", str(target),
         *map(str, sorted(wheels.glob("*.whl")))],
        check=True, capture_output=True,
    )  # fmt: skip
    return target


def experiment_file(folder: Path, corpus: dict[str, Any], database_url: str | None = None) -> Path:
    """An experiment file in ``folder`` that reads ``corpus``: byte tokens, chunks of 32."""
    store = {"path": "store"} if database_url is None else {"path": "store", "url": database_url}
    tables = {
        "experiment": {"name": "python-packages-test"},
        "store": store,
        "corpus": corpus,
        "tokenizer": {"name": "bytes"},
        "retrieval": {"chunk_size": 32, "neighbours": 2, "validation_fraction": 0.0},
    }
    path = folder / "experiment.toml"
    path.write_text(toml_text(tables))
    return path


def reader(base_dir: Path, **options: Any) -> CorpusReader:
    """Build the reader from a ``[corpus]`` table, as a stage would."""
    table = {"name": "python-packages", **options}
    return build_plugin("corpus_readers", table, table_name="corpus", base_dir=base_dir)


def documents(corpus: CorpusReader) -> dict[str, SourceDocument]:
    corpus.check()
    docs = list(corpus.documents())
    ids = [doc.external_id for doc in docs]
    assert ids == sorted(set(ids)), "unique ids in sorted order"
    assert corpus.count_hint() == len(docs)
    return {doc.external_id: doc for doc in docs}


def tiny(name: str) -> str:
    return f"retro-test-tiny/tinypkg/{name}"


def test_a_package_is_read_by_its_paths_without_tests_and_copies(site: Path) -> None:
    corpus = reader(site, packages=["retro-test-tiny"], paths=["."])  # relative to the file
    docs = documents(corpus)
    expected = ["__init__.py", "gen/__init__.py", *(f"gen/m{i:02}.py" for i in range(12))]
    expected += ["original.py", "vendored/__init__.py", "vendored/original.py"]
    assert list(docs) == [tiny(name) for name in expected]  # no tests/, no dist-info
    assert docs[tiny("original.py")].data == COPIED.encode()
    copy = docs[tiny("vendored/original.py")]
    assert (copy.data, copy.problem) == (b"", DUPLICATE)
    assert docs[tiny("gen/__init__.py")].problem is None, "blank files are the core's to count"
    assert docs[tiny("vendored/__init__.py")].problem is None
    version = {"distribution": "retro-test-tiny", "version": "1.2.3"}
    assert all(doc.metadata == version for doc in docs.values())
    assert corpus.describe() == f"the files of retro-test-tiny 1.2.3 in {site}"

    kept = documents(reader(site, packages=["retro-test-tiny"], paths=["."], dedupe=False))
    assert kept[tiny("vendored/original.py")].data == COPIED.encode()


def test_include_and_exclude_globs(site: Path) -> None:
    def ids(**globs: Any) -> list[str]:
        corpus = reader(site, packages=["retro-test-tiny"], paths=["."], **globs)
        return [key.removeprefix("retro-test-tiny/tinypkg/") for key in documents(corpus)]

    assert ids(include=["tinypkg/tests/*.py"], exclude=[]) == [  # excluded by default
        "tests/__init__.py",
        "tests/test_original.py",
    ]
    assert ids(include=["tinypkg/gen/m0[0-2].py"]) == ["gen/m00.py", "gen/m01.py", "gen/m02.py"]
    assert ids(include=["tinypkg/*.py"], exclude=["**/__init__.py"]) == ["original.py"]
    everything = ids(include=["**"], exclude=[])
    assert not [key for key in everything if "dist-info" in key or "__pycache__" in key]
    with pytest.raises(ConfigError) as error:
        reader(site, packages=["retro-test-tiny"], paths=["."], include=["**/*.rs"]).check()
    assert str(error.value) == (
        "[corpus] include: no file of retro-test-tiny matches ['**/*.rs'] and none of exclude "
        "['**/tests/**', '**/test/**', '**/test_*.py', '**/conftest.py']"
    )


def test_max_files_is_an_even_spread_in_sorted_order(site: Path) -> None:
    both = {"packages": ["retro-test-tiny", "retro-test-single"], "paths": ["."]}
    everything = list(documents(reader(site, **both)))
    some = list(documents(reader(site, **both, max_files=5)))
    n = len(everything)
    assert n == 18 and some == [everything[i * n // 5] for i in range(5)]
    assert some == list(documents(reader(site, **both, max_files=5))), "the same every time"
    assert list(documents(reader(site, **both, max_files=100))) == everything


def test_a_single_module_distribution(site: Path) -> None:
    docs = documents(reader(site, packages=["retro-test-single", "retro-test-tiny"], paths=["."]))
    single = docs["retro-test-single/tinymod.py"]
    assert single.data == SINGLE["tinymod.py"].encode()
    assert single.metadata == {"distribution": "retro-test-single", "version": "0.1"}
    assert list(docs)[0] == "retro-test-single/tinymod.py"  # one sorted order over both


def test_a_distribution_without_a_file_list_is_read_from_its_package(tmp_path: Path) -> None:
    """A ``.dist-info`` with no RECORD (as some installers leave): the import package's folder."""
    info = tmp_path / "retro_test_legacy-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: retro-test-legacy\nVersion: 2.0\n")
    package = tmp_path / "retro_test_legacy"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("from .core import x\n")
    (package / "core.py").write_text("x = 1\n")
    (package / "__pycache__" / "stray.py").write_text("never read: bytecode's folder\n")
    docs = documents(reader(tmp_path, packages=["retro-test-legacy"], paths=["."]))
    assert {key: doc.data for key, doc in docs.items()} == {
        "retro-test-legacy/retro_test_legacy/__init__.py": b"from .core import x\n",
        "retro-test-legacy/retro_test_legacy/core.py": b"x = 1\n",
    }
    assert docs["retro-test-legacy/retro_test_legacy/core.py"].metadata == {
        "distribution": "retro-test-legacy",
        "version": "2.0",
    }


def test_an_editable_install_is_read_from_its_sources(tmp_path: Path) -> None:
    """The example plugin is installed editable: its RECORD names only the import hook."""
    docs = documents(reader(tmp_path, packages=["retro-platform-sinusoidal"]))
    [(key, doc)] = docs.items()
    assert key == "retro-platform-sinusoidal/retro_platform_sinusoidal.py"
    assert b"def register_positional_encodings" in doc.data
    assert doc.metadata is not None and doc.metadata["version"] == "0.1.0"


def test_the_installed_transformers(tmp_path: Path) -> None:
    from importlib.metadata import version

    corpus = reader(
        tmp_path, packages=["transformers"], include=["transformers/models/bert/modeling_*.py"]
    )
    docs = documents(corpus)
    key = "transformers/transformers/models/bert/modeling_bert.py"
    assert key in docs and all(k.startswith("transformers/transformers/models/bert/") for k in docs)
    assert b"class BertModel(" in docs[key].data
    assert docs[key].metadata == {
        "distribution": "transformers",
        "version": version("transformers"),
    }
    assert corpus.describe() == f"the files of transformers {version('transformers')} on sys.path"


def test_a_missing_distribution_is_one_line_that_suggests_a_name(site: Path) -> None:
    with pytest.raises(ConfigError) as error:
        reader(site, packages=["retro-test-tiny", "retro-test-tinny"], paths=["."]).check()
    assert str(error.value) == (
        f"[corpus] packages: no distribution 'retro-test-tinny' is installed in {site} "
        "(did you mean 'retro-test-tiny'?)"
    )
    with pytest.raises(ConfigError) as error:
        reader(site, packages=["retro-test-tiny"]).check()  # not on sys.path
    assert str(error.value).startswith(
        "[corpus] packages: no distribution 'retro-test-tiny' is installed on sys.path"
    )


def test_a_missing_distribution_stops_ingest_with_exit_code_2(tmp_path: Path) -> None:
    corpus = {"name": "python-packages", "packages": ["transfomers"]}
    path = experiment_file(tmp_path, corpus)
    result = CliRunner().invoke(cli, ["ingest", str(path)])
    assert result.exit_code == 2
    assert result.output == (
        "Error: [corpus] packages: no distribution 'transfomers' is installed on sys.path "
        "(did you mean 'transformers'?)\n"
    )


def test_options_are_validated(tmp_path: Path) -> None:
    cases = {
        "packages": {},
        "at least 1 item": {"packages": []},
        "'a/b' is not a distribution name": {"packages": ["a/b"]},
        "'Typing_Extensions' names the same distribution as 'typing-extensions'": {
            "packages": ["typing-extensions", "Typing_Extensions"]
        },
        "invalid glob": {"packages": ["six"], "exclude": ["[z-a]"]},
        "did you mean 'dedupe'?": {"packages": ["six"], "dedup": False},
        "max_files": {"packages": ["six"], "max_files": 0},
    }
    for message, options in cases.items():
        with pytest.raises(ConfigError) as error:
            reader(tmp_path, **options)
        assert message in str(error.value) and "\n" not in str(error.value), message
    _, options = plugin_options(
        "corpus_readers",
        {"name": "python-packages", "packages": ["six"], "paths": ["lib"]},
        base_dir=tmp_path,
    )
    assert options.paths == (tmp_path / "lib",)
    assert (options.include, options.max_files, options.dedupe) == (("**/*.py",), None, True)


# --- through ingest --------------------------------------------------------------------------


def stored(store: Any) -> dict[str, dict[str, str] | None]:
    with store.session() as session:
        return dict(session.execute(select(Document.external_id, Document.meta)).all())


def test_ingest_skips_the_copy_and_stores_the_version(
    site: Path, tmp_path: Path, database_url: str
) -> None:
    corpus = {"name": "python-packages", "packages": ["retro-test-tiny"], "paths": [str(site)]}
    path = experiment_file(tmp_path, corpus, database_url)
    experiment, store = open_experiment(path)
    with store:
        report = ingest(experiment, store, progress=False)
        assert report.skipped == {DUPLICATE: 1, "empty": 2}
        assert f"{tiny('vendored/original.py')}: {DUPLICATE}" in report.skipped_examples
        rows = stored(store)
    version = {"distribution": "retro-test-tiny", "version": "1.2.3"}
    assert rows == {tiny(name): version for name in TINY_STORED}
    assert f"1 {DUPLICATE}" in report.summary()

    result = CliRunner().invoke(cli, ["ingest", str(path)])  # again: nothing new
    assert result.exit_code == 0, result.output
    assert f"{len(TINY_STORED)} unchanged, 3 skipped (2 empty, 1 {DUPLICATE}; e.g. " in (
        result.output
    )


def test_a_new_version_with_the_same_files_refreshes_the_metadata(
    site: Path, tmp_path: Path, database_url: str
) -> None:
    """As after an upgrade that changed no source: the documents stay, their version moves."""
    copy = shutil.copytree(site, tmp_path / "site")
    corpus = {"name": "python-packages", "packages": ["retro-test-tiny"], "paths": [str(copy)]}
    path = experiment_file(tmp_path, corpus, database_url)
    experiment, store = open_experiment(path)
    with store:
        ingest(experiment, store, progress=False)
        with store.session() as session:
            corpus_version = session.scalar(select(Corpus.version))
            ids = session.scalars(select(Document.id).order_by(Document.id)).all()
        metadata = copy / "retro_test_tiny-1.2.3.dist-info" / "METADATA"
        metadata.write_text(metadata.read_text().replace("Version: 1.2.3", "Version: 1.2.4"))
        report = ingest(experiment, store, progress=False)
        assert (report.added, report.replaced, report.unchanged) == (0, 0, len(TINY_STORED))
        version = {"distribution": "retro-test-tiny", "version": "1.2.4"}
        assert stored(store) == {tiny(name): version for name in TINY_STORED}
        with store.session() as session:
            assert session.scalar(select(Corpus.version)) == corpus_version, "nothing is stale"
            assert session.scalars(select(Document.id).order_by(Document.id)).all() == ids


# --- docs ------------------------------------------------------------------------------------


def test_every_option_is_documented() -> None:
    from retro_platform.default_plugins.corpus_readers.python_packages import (
        PythonPackagesOptions,
    )

    section = DOCS.read_text().split("#### `python-packages`", 1)[1].split("\n#", 1)[0]
    for option in PythonPackagesOptions.model_fields:
        assert f"| `{option}` |" in section, f"docs/plugins.md: python-packages option {option}"
