"""The runner's tables of an experiment file: ``[model]``, ``[train]``, ``[eval]``,
``[generate]``, ``[mlflow]`` and ``[sweep]``.

What the store decides is not repeated here: the vocabulary size and padding id come from the
tokenizer, the chunk size and neighbour count from ``[retrieval]``. Rules that span tables
(a sequence length that is a multiple of the chunk size, ...) are checked by
:meth:`retro_platform.config.Experiment.check_runner`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from retro_platform.config.overrides import flatten_sweep
from retro_platform.protocols.options import NumbersNotBooleans, RelativePath


class ConfigTable(NumbersNotBooleans):
    """Base of every table of the experiment file: unknown keys refused, values immutable, and
    a number key refuses ``true``/``false``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelTable(ConfigTable):
    """``[model]``: the RETRO keyword arguments that are the user's to choose.

    ``num_tokens`` and ``pad_id`` come from the tokenizer, ``chunk_size`` from ``[retrieval]``,
    and ``neighbour_len`` the model's default, twice the chunk size; ``max_seq_len``
    is ``[train] seq_len``. The defaults are the quickstart's small model.
    """

    dec_dim: int = Field(256, ge=1, description="width of the decoder")
    dec_depth: int = Field(4, ge=1, description="decoder layers")
    dec_cross_attn_layers: tuple[int, ...] = Field(
        (2, 4), description="1-based decoder layers with chunked cross-attention"
    )
    enc_dim: int = Field(128, ge=1, description="width of the neighbour encoder")
    enc_depth: int = Field(2, ge=0, description="encoder layers")
    enc_cross_attn_layers: tuple[int, ...] | None = Field(
        None,
        description="1-based encoder layers that attend to the retrieving chunk; "
        "default: every layer (the paper)",
    )
    heads: int = Field(4, ge=1, description="attention heads")
    dim_head: int = Field(64, ge=1, description="width of one attention head")
    ff_mult: int = Field(4, ge=1, description="feed-forward width as a multiple of the model's")
    enc_attn_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="encoder attention dropout")
    enc_ff_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="encoder feed-forward dropout")
    dec_attn_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="decoder attention dropout")
    dec_ff_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="decoder feed-forward dropout")
    positional_encoding: str = Field(
        "rotary",
        min_length=1,
        description="a positional-encoding plugin (`retro-platform plugins`)",
    )
    positional_encoding_options: dict[str, Any] = Field(
        default_factory=dict, description="that plugin's options"
    )
    checkpoint_activations: bool = Field(
        False, description="recompute activations in the backward pass to save memory"
    )
    loss_chunk_tokens: int = Field(
        2048, ge=1, description="tokens whose logits the loss computes at a time"
    )


class TrainTable(ConfigTable):
    """``[train]``: the optimisation, its batches and its checkpoints."""

    steps: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    grad_accumulation: int = Field(
        1, ge=1, description="forward passes per optimizer step (batch = batch_size × this)"
    )
    seq_len: int = Field(
        256, ge=2, description="tokens per training sequence, a multiple of chunk_size"
    )
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate")
    min_lr_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="final learning rate as a share of the peak (cosine)"
    )
    warmup_steps: int = Field(30, ge=0, description="steps of linear warm-up from 0")
    weight_decay: float = Field(
        0.1, ge=0.0, description="AdamW weight decay (never on norms, biases or embeddings)"
    )
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    grad_clip: float = Field(1.0, ge=0.0, description="global gradient-norm clip; 0: off")
    neighbours: Literal["retrieved", "none", "shuffled"] = Field(
        "retrieved",
        description='what the chunked cross-attention reads: "retrieved", each chunk\'s '
        'nearest neighbours; "none", no neighbours at all (RETRO[off] trained as a baseline); '
        '"shuffled", as many neighbours drawn at random from other documents of the database '
        "(a control: the same parameters and shapes, no relevant text), in evaluation too",
    )
    document_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="train on this share of the documents that are not held out (a stable "
        "draw by document id); the retrieval database keeps all of them",
    )
    retrofit: bool = Field(
        False,
        description="freeze the decoder and train only the encoder and the cross-attention",
    )
    retrofit_from: RelativePath | None = Field(
        None, description="with retrofit: a checkpoint of a decoder-only run to start from"
    )
    cross_documents: bool = Field(
        False,
        description="let a training sequence run on into the next document; its neighbours "
        "then exclude every document it spans",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description='"auto": the GPU when torch sees one, else the CPU'
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description='"auto": bf16 autocast on CUDA, fp32 on the CPU'
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads; default: torch's choice (one per core), or under "
        "torchrun the cores shared out among the processes of a machine",
    )
    checkpoint_every: int = Field(
        50, ge=1, description="steps between checkpoints (and the last step always)"
    )
    log_every: int = Field(10, ge=1, description="steps between logged training metrics")
    output: RelativePath = Field(
        Path("runs"),
        validate_default=True,
        description="folder of run outputs (checkpoints); one sub-folder per run",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "retrieval" in data:
            raise ValueError(
                'retrieval was renamed: write neighbours = "none" for retrieval = false, '
                '"retrieved" for true'
            )
        return data

    @property
    def retrieval(self) -> bool:
        """Whether the model reads neighbours (retrieved or shuffled) at all."""
        return self.neighbours != "none"

    @model_validator(mode="after")
    def _retrofit_source(self) -> TrainTable:
        if self.retrofit_from is not None and not self.retrofit:
            raise ValueError("retrofit_from needs retrofit = true")
        return self


class EvalTable(ConfigTable):
    """``[eval]``: validation loss and bits per byte, with retrieval on and off."""

    every: int = Field(
        0, ge=0, description="steps between validations during training; 0: only at the end"
    )
    sequences: int = Field(
        64, ge=1, description="validation sequences (the first of each held-out document first)"
    )
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    retrieval_off: bool = Field(
        True, description="also measure RETRO[off]: the same weights with no neighbours"
    )
    leakage_buckets: tuple[float, ...] = Field(
        (0.0, 0.125, 0.25, 0.5, 0.75, 1.0),
        description="edges of the overlap buckets of the leakage table (longest common token "
        "run with a neighbour / chunk length)",
    )

    @field_validator("leakage_buckets")
    @classmethod
    def _edges(cls, edges: tuple[float, ...]) -> tuple[float, ...]:
        if len(edges) < 2 or list(edges) != sorted(set(edges)) or edges[0] < 0 or edges[-1] > 1:
            raise ValueError("must be at least two increasing numbers from 0 to 1")
        return edges


class GenerateTable(ConfigTable):
    """``[generate]``: the sample generations logged at the end of a run."""

    samples: int = Field(3, ge=0, description="sample generations; 0: none")
    prompts: tuple[str, ...] = Field(
        (), description="prompt texts; default: the starts of validation documents"
    )
    prompt_tokens: int = Field(
        64, ge=1, description="tokens of a validation document used as a default prompt"
    )
    max_tokens: int = Field(128, ge=1, description="tokens generated per sample")
    temperature: float = Field(
        0.8, ge=0.0, allow_inf_nan=False, description="sampling temperature; 0: greedy"
    )
    top_k: int = Field(40, ge=0, description="sample among the k likeliest tokens; 0: all")


class MlflowTable(ConfigTable):
    """``[mlflow]``: where runs are tracked."""

    tracking_uri: str | None = Field(
        None,
        description="tracking URI; default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
        "beside the experiment file",
    )
    experiment: str | None = Field(
        None, description="MLflow experiment name; default: [experiment] name"
    )
    run_name: str | None = Field(
        None,
        description="run name; default: [experiment] name (a sweep: the parent's name; each "
        "point is named by its swept values, e.g. neighbours=none,lr=0.0003)",
    )
    log_checkpoint: bool = Field(True, description="log the final checkpoint as an artifact")


class SweepTable(ConfigTable):
    """``[sweep]``: a grid over dotted keys, e.g. ``"retriever.name" = ["faiss-flat",
    "faiss-hnsw"]``; one child run per point. Every value is a list of the values to try."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _dotted(cls, data: Any) -> Any:
        # TOML reads a bare dotted key (retriever.name = [...]) as nested tables: flatten them
        return flatten_sweep(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _lists(self) -> SweepTable:
        for key, values in (self.model_extra or {}).items():
            if "." not in key:
                raise ValueError(f'{key!r}: sweep keys are dotted, e.g. "train.lr"')
            if not isinstance(values, list) or not values:
                raise ValueError(f"{key!r}: needs a non-empty list of values")
        return self

    @property
    def grid(self) -> dict[str, list[Any]]:
        """Each swept dotted key and its values, in file order."""
        return dict(self.model_extra or {})
