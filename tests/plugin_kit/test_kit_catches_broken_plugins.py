"""The kit fails a plugin that breaks a rule, and its failure names the rule: three broken
retrievers run through the kit in a fresh pytest (as a plugin author would run it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

from tests.limits import HANG_S

ROOT = Path(__file__).resolve().parents[2]

BROKEN = '''
import numpy as np

from retro_platform.errors import IndexFileError
from retro_platform.protocols import PluginOptions, Retriever
from retro_platform.testing import RetrieverContract


class ExactRetriever(Retriever):
    """Exact inner-product search in numpy: keeps every rule."""

    Options = PluginOptions

    def build(self, vectors, ids):
        self.vectors, self.ids = np.asarray(vectors, np.float32), np.asarray(ids, np.int64)

    def search(self, queries, k):
        scores = np.asarray(queries, np.float32) @ self.vectors.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, order, axis=1)
        pad = k - order.shape[1]
        ids = np.pad(self.ids[order], ((0, 0), (0, pad)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
        return top.astype(np.float32), ids

    def save(self, path):
        with open(path, "wb") as file:  # np.save would add ".npy" to a name
            np.save(file, np.c_[self.ids, self.vectors.view(np.int32)])

    def load(self, path):
        try:
            data = np.load(path)
        except (OSError, ValueError) as error:
            raise IndexFileError(str(error)) from None
        self.ids, self.vectors = data[:, 0], data[:, 1:].astype(np.int32).view(np.float32)

    @property
    def size(self):
        return len(self.ids)

    def stored_ids(self):
        return self.ids.copy()


class ForeignIds(ExactRetriever):
    def search(self, queries, k):
        scores, ids = super().search(queries, k)
        return scores, np.where(ids >= 0, ids + 1, ids)  # ids it never stored


class Unsorted(ExactRetriever):
    def search(self, queries, k):
        scores, ids = super().search(queries, k)
        return scores[:, ::-1].copy(), ids[:, ::-1].copy()  # worst first


class Updatable(ExactRetriever):
    """Adds and removes: keeps every rule."""

    def add(self, vectors, ids):
        self.vectors = np.concatenate([self.vectors, np.asarray(vectors, np.float32)])
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])

    def remove(self, ids):
        gone = np.isin(self.ids, ids)
        self.vectors, self.ids = self.vectors[~gone], self.ids[~gone]
        return int(gone.sum())


class WrongAfterLoad(Updatable):
    """Removes by position in a loaded index: right on a built one, wrong on the core's."""

    def load(self, path):
        super().load(path)
        self.loaded = True

    def remove(self, ids):
        if not getattr(self, "loaded", False):
            return super().remove(ids)
        count = int(np.isin(self.ids, ids).sum())
        self.vectors, self.ids = self.vectors[count:], self.ids[count:]
        return count


class InfiniteDefault(ExactRetriever):
    class Options(PluginOptions):
        min_score: float = float("-inf")  # PostgreSQL's JSON column refuses it


class TestExact(RetrieverContract):
    factory = ExactRetriever


class TestInfiniteDefault(RetrieverContract):
    factory = InfiniteDefault


class TestForeignIds(RetrieverContract):
    factory = ForeignIds


class TestUnsorted(RetrieverContract):
    factory = Unsorted


class TestUpdatable(RetrieverContract):
    factory = Updatable


class TestWrongAfterLoad(RetrieverContract):
    factory = WrongAfterLoad
'''


def test_broken_retrievers_fail_with_the_rule_they_break(tmp_path: Path) -> None:
    (tmp_path / "test_broken_retrievers.py").write_text(BROKEN)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml=report.xml",
         "test_broken_retrievers.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_S,
    )  # fmt: skip
    out = result.stdout + result.stderr
    failed = {
        f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}": failure.get("message")
        for case in ElementTree.parse(tmp_path / "report.xml").iter("testcase")
        if (failure := case.find("failure")) is not None
    }
    assert result.returncode == 1, out
    # the correct one passes every rule: the failures below are the bugs', not the kit's
    assert not [test for test in failed if test.startswith(("TestExact::", "TestUpdatable::"))], out
    foreign = failed["TestForeignIds::test_search_returns_only_stored_ids"]
    assert "rule: search returns only ids that were stored" in foreign, out
    assert "rule: ids round-trip" in failed["TestForeignIds::test_ids_round_trip"], out
    assert [test for test in failed if test.startswith("TestInfiniteDefault::")] == [
        "TestInfiniteDefault::test_options_are_recorded_as_strict_json"
    ], out
    strict = failed["TestInfiniteDefault::test_options_are_recorded_as_strict_json"]
    assert "rule: options hold no NaN or infinity" in strict and "-inf" in strict, out
    unsorted = failed["TestUnsorted::test_rows_are_sorted_best_first"]
    assert "rule: each row is sorted best first" in unsorted, out
    assert "TestUnsorted::test_search_returns_only_stored_ids" not in failed, out
    # a bug only a loaded index shows: the rules on a built one pass
    assert [test for test in failed if test.startswith("TestWrongAfterLoad::")] == [
        "TestWrongAfterLoad::test_a_loaded_index_takes_large_updates"
    ], out
    after_load = failed["TestWrongAfterLoad::test_a_loaded_index_takes_large_updates"]
    assert "stored_ids holds exactly the ids kept and added" in after_load, out
