"""One real store (and one briefly trained tiny RETRO) shared by the evaluation tests."""

from __future__ import annotations

import pytest

from retro_platform import RETRO
from tests.evaluation.helpers import IndexedStore, build_store, document_batches, tiny_retro, train


@pytest.fixture(scope="session")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> IndexedStore:
    return build_store(tmp_path_factory.mktemp("evaluation"))


@pytest.fixture(scope="session")
def trained(indexed: IndexedStore) -> RETRO:
    """Trained on the training documents only, long enough to beat chance clearly."""
    batches = document_batches(indexed, indexed.training_documents(), batch_size=8)
    return train(tiny_retro(indexed), batches, steps=60)
