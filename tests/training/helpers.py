"""A small real store and tiny experiments for the training tests (also used by a driver
script that a test runs in a subprocess)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retro_platform.cli.common import open_experiment
from retro_platform.config import Experiment
from retro_platform.corpus.ingest import ingest, load_tokenizer
from retro_platform.model.retro import RETRO
from retro_platform.pipeline import IndexResult, run_index
from retro_platform.protocols import Tokenizer
from retro_platform.store.models import Corpus
from retro_platform.training.model_factory import build_model
from retro_platform.training.sequences import SequenceData, load_sequence_data
from tests.pipeline.helpers import write_experiment, write_stdlib_corpus

#: Fewer bytes than one 64-token sequence: its only window is padded.
TINY_TEXT = "A tiny document, shorter than a sequence.\n"


def write_corpus(folder: Path) -> Path:
    write_stdlib_corpus(folder)
    (folder / "tiny.txt").write_text(TINY_TEXT)
    return folder


def tables(store_dir: Path, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Tiny tables: 16-token chunks, 64-token sequences, a 2-layer 32-wide model; each
    override updates its table key by key."""
    base: dict[str, dict[str, Any]] = {
        "experiment": {"name": "training-test", "seed": 7},
        "store": {"path": str(store_dir)},
        "retrieval": {"chunk_size": 16, "neighbours": 2, "validation_fraction": 0.3},
        "model": {
            "dec_dim": 32,
            "dec_depth": 2,
            "dec_cross_attn_layers": [2],
            "enc_dim": 32,
            "enc_depth": 1,
            "heads": 2,
            "dim_head": 16,
            "ff_mult": 2,
        },
        "train": {
            "steps": 6,
            "batch_size": 4,
            "seq_len": 64,
            "lr": 3e-3,
            "warmup_steps": 2,
            "checkpoint_every": 3,
            "log_every": 2,
            "threads": 1,
        },
        "eval": {"sequences": 8, "batch_size": 4},
        "generate": {"prompt_tokens": 16},
    }
    for table, values in overrides.items():
        base[table] = {**base.get(table, {}), **values}
    return base


def experiment_file(folder: Path, corpus: Path, store_dir: Path, **overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_experiment(folder, corpus, **tables(store_dir, **overrides))


@dataclass
class Setup:
    experiment: Experiment
    index: IndexResult
    tokenizer: Tokenizer
    data: SequenceData

    def model(self) -> RETRO:
        """A fresh model, seeded as the runner seeds it."""
        torch.manual_seed(self.experiment.experiment.seed)
        return build_model(self.experiment, self.tokenizer.vocab_size, self.tokenizer.pad_id)


def prepare(path: Path) -> Setup:
    """Ingest and index (reused when stored), then load the sequences."""
    experiment, store = open_experiment(str(path))
    try:
        ingest(experiment, store, progress=False)
        index = run_index(experiment, store, progress=False, log=lambda _: None)
        with store.session() as session:
            corpus = session.get(Corpus, index.corpus_id)
        tokenizer = load_tokenizer(experiment, store, corpus)
        data = load_sequence_data(experiment, store, index, tokenizer)
    finally:
        store.close()
    return Setup(experiment, index, tokenizer, data)
