"""Validation loss and bits per byte, with retrieval on and off."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from retro_platform.errors import ConfigError
from retro_platform.evaluation import evaluate
from retro_platform.training.batch import Batch
from tests.evaluation.helpers import IndexedStore, document_batches, tiny_retro


class Bigram(nn.Module):
    """Logits that depend only on the current token: a table we can read the answer from."""

    def __init__(self, table: torch.Tensor, chunk_size: int, pad_id: int = 0) -> None:
        super().__init__()
        self.table, self.chunk_size, self.pad_id = table, chunk_size, pad_id
        self.calls: list[bool] = []

    def forward(self, seq, retrieved=None, return_loss=False):
        self.calls.append(retrieved is not None)
        assert not return_loss and not self.training and not torch.is_grad_enabled()
        return self.table[seq]


def synthetic_batch() -> Batch:
    # 2 sequences, 2 chunks of 4 tokens, 1 neighbour of 8; the second sequence ends early
    tokens = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2, 3], [3, 3, 2, 1, 2, 0, 0, 0, 0]])
    return Batch(
        tokens=tokens,
        retrieved=torch.ones(2, 2, 1, 8, dtype=torch.long),
        chunk_rows=torch.tensor([[0, 1], [2, -1]]),
        neighbour_rows=torch.zeros(2, 2, 1, dtype=torch.long),
        chunk_bytes=torch.tensor([[5, 4], [7, 0]]),
    )


def test_uniform_logits_give_log_vocab_nats_and_bits_over_bytes() -> None:
    vocab = 4
    model = Bigram(torch.zeros(vocab, vocab), chunk_size=4)
    result = evaluate(model, [synthetic_batch()], device="cpu")
    # targets: 8 of the first sequence, 4 of the second (then padding)
    assert result.tokens == 12 and result.bytes == 16
    assert result.loss == pytest.approx(math.log(vocab))
    assert result.bpb == pytest.approx(12 * math.log2(vocab) / 16)
    assert result.loss_off == pytest.approx(result.loss) and result.bpb_off == result.bpb
    assert model.calls == [True, False]  # once with the neighbours, once without
    assert result.chunk_rows.tolist() == [0, 1, 2]  # the padding chunk is left out
    assert result.chunk_tokens.tolist() == [4, 4, 4]
    assert result.chunk_bytes.tolist() == [5, 4, 7]


def test_per_token_losses_match_a_direct_computation() -> None:
    generator = torch.Generator().manual_seed(3)
    table = torch.randn(4, 4, generator=generator)
    batch = synthetic_batch()
    result = evaluate(Bigram(table, chunk_size=4), [batch], device="cpu", retrieval_off=False)
    log_probs = torch.log_softmax(table, dim=-1)
    expected = np.zeros((2, 2))
    for b in range(2):
        for t in range(8):  # position t predicts token t + 1 and belongs to chunk t // 4
            target = int(batch.tokens[b, t + 1])
            if target != 0:
                expected[b, t // 4] -= float(log_probs[batch.tokens[b, t], target])
    assert np.allclose(result.chunk_loss, [expected[0, 0], expected[0, 1], expected[1, 0]])
    assert result.loss == pytest.approx(expected.sum() / 12)
    assert result.bpb == pytest.approx(expected.sum() / math.log(2) / 16)
    assert result.loss_off is None and result.bpb_off is None and result.chunk_loss_off is None


def test_matches_the_models_own_loss_with_and_without_neighbours(
    indexed: IndexedStore, trained
) -> None:
    batches = document_batches(indexed, indexed.held_out, batch_size=4, limit=12)
    trained.train()  # evaluate switches to eval mode and back
    result = evaluate(trained, batches, device="cpu")
    assert trained.training
    trained.eval()
    with torch.no_grad():
        on = off = counted = 0.0
        for batch in batches:
            tokens = int((batch.tokens[:, 1:] != indexed.pad_id).sum())
            on += float(trained(batch.tokens, batch.retrieved, return_loss=True)) * tokens
            off += float(trained(batch.tokens, None, return_loss=True)) * tokens
            counted += tokens
    assert result.tokens == counted
    assert result.loss == pytest.approx(on / counted, rel=1e-5)
    assert result.loss_off == pytest.approx(off / counted, rel=1e-5)
    assert abs(result.loss - result.loss_off) > 1e-4  # the neighbours do change the predictions
    assert result.bpb == pytest.approx(on / counted * result.tokens / math.log(2) / result.bytes)


def test_counts_every_byte_of_the_validation_documents_once(indexed: IndexedStore) -> None:
    batches = document_batches(indexed, indexed.held_out, batch_size=8)
    result = evaluate(tiny_retro(indexed), batches, device="cpu")
    held_out = np.isin(indexed.table.document_ids, indexed.held_out)
    assert sorted(result.chunk_rows.tolist()) == np.flatnonzero(held_out).tolist()
    corpus = indexed.experiment.corpus["path"]
    names = [indexed.documents[int(d)] for d in indexed.held_out]
    text_bytes = sum(len((Path(corpus) / name).read_bytes()) for name in names)
    assert result.bytes == text_bytes
    # byte tokens: every byte is a token; a sequence's extra token is the next one's first, so
    # only each document's first token is never predicted
    assert result.tokens == text_bytes - len(indexed.held_out)
    assert result.chunk_loss.sum() / result.tokens == pytest.approx(result.loss)
    # an untrained model is near chance over 257 byte ids: its read-out starts at unit scale
    # (model/retro.py's init), whose logits cost about half their variance, 0.5 nats a token,
    # above the uniform prediction
    chance = math.log2(257)
    assert chance - 0.2 < result.bpb < chance + 0.5 / math.log(2) + 0.2


def test_a_trained_model_beats_chance(indexed: IndexedStore, trained) -> None:
    batches = document_batches(indexed, indexed.held_out, batch_size=8)
    result = evaluate(trained, batches, device="cpu")
    assert result.bpb < math.log2(257) - 2
    assert result.bpb_off < math.log2(257) - 2
    assert result.retrieval and result.chunk_overlap is not None


def test_batches_without_neighbours_are_evaluated_once(indexed: IndexedStore, trained) -> None:
    with_neighbours = document_batches(indexed, indexed.held_out, limit=8)
    without = document_batches(indexed, indexed.held_out, limit=8, retrieval=False)
    baseline = evaluate(trained, without, device="cpu")
    assert not baseline.retrieval and baseline.chunk_overlap is None
    assert baseline.loss == baseline.loss_off
    full = evaluate(trained, with_neighbours, device="cpu")
    assert baseline.loss == pytest.approx(full.loss_off, rel=1e-6)
    with pytest.raises(ValueError, match="some batches carry neighbours"):
        evaluate(trained, with_neighbours + without, device="cpu")


def test_an_empty_validation_set_is_a_clear_error(indexed: IndexedStore) -> None:
    with pytest.raises(ConfigError, match="validation_fraction"):
        evaluate(tiny_retro(indexed), [], device="cpu")
