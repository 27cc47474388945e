"""Rules that span the tables of an experiment file, checked before any work starts.

Each table validates its own keys (types, ranges, unknown keys); what is left are the rules
between keys and tables, and the checks that need a plugin or a file:

* ``[train] seq_len`` is a multiple of ``[retrieval] chunk_size`` (a sequence is whole chunks);
* ``[model]`` cross-attention layers lie within their stack's depth, each listed once;
* the positional encoding is installed and accepts its options; the model itself is built
  on PyTorch's ``meta`` device (no memory, no compute) so that its own checks run too;
* ``[train] retrofit`` has something to train, and ``retrofit_from`` exists;
* every ``[generate]`` prompt has some text;
* ``[mlflow] tracking_uri`` is neither MLflow's deprecated file store nor the store's database.

Every failure is a one-line :class:`ConfigError` that starts with the ``[table] key`` to fix.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from retro_platform.errors import ConfigError, UnknownPluginError, did_you_mean
from retro_platform.model.config import CROSS_ATTN_LAYERS, layers_outside
from retro_platform.model.retro import RETRO
from retro_platform.plugins import get_positional_encoding
from retro_platform.protocols import PositionalEncoding

if TYPE_CHECKING:
    from torch import nn

    from retro_platform.config.experiment import Experiment

#: Keyword arguments the model passes to every positional encoding: never the user's options.
ENCODING_ARGUMENTS = ("role", "dim", "heads", "dim_head", "max_positions", "causal")


def check_runner(experiment: Experiment) -> None:
    """The rules of the module docstring; the first one broken raises :class:`ConfigError`."""
    _check_sequence(experiment)
    _check_layers(experiment)
    _check_retrofit(experiment)
    _check_generate(experiment)
    _check_mlflow(experiment)
    build_meta_model(experiment)


def model_kwargs(experiment: Experiment, *, num_tokens: int, pad_id: int = 0) -> dict[str, Any]:
    """The ``RETRO(**kwargs)`` of an experiment, the one place an experiment becomes the
    model's arguments: ``[model]`` plus what other tables and the tokenizer decide
    (vocabulary, padding id, sequence length, chunk size). The neighbour length is left to
    the model, which derives it from the chunk size (a chunk plus its continuation)."""
    return {
        **experiment.model.model_dump(),
        "num_tokens": num_tokens,
        "pad_id": pad_id,
        "max_seq_len": experiment.train.seq_len,
        "chunk_size": experiment.retrieval.chunk_size,
    }


def build_meta_model(experiment: Experiment, *, num_tokens: int = 2) -> nn.Module:
    """The experiment's RETRO on the ``meta`` device: every check of the model and of its
    positional encoding runs, but no weight is allocated. Problems become ``[model] ...``."""
    _check_encoding(
        experiment.model.positional_encoding, experiment.model.positional_encoding_options
    )
    try:
        with torch.device("meta"):
            return RETRO(**model_kwargs(experiment, num_tokens=num_tokens))
    except (ConfigError, TypeError, ValueError) as error:
        # the model's own checks, and the positional encoding's ("positional encoding 'x': ...")
        raise ConfigError(f"[model] {error}") from None


def encoding_options(name: str) -> dict[str, Any] | None:
    """The options the positional encoding ``name`` declares, each with its default
    (``inspect.Parameter.empty`` when it has none); None when its factory takes keywords that
    cannot be listed (a ``**kwargs`` that goes elsewhere than the protocol's ``__init__``)."""
    factory = get_positional_encoding(name).factory
    if isinstance(factory, type) and issubclass(factory, PositionalEncoding):
        # each subclass's __init__ passes its **kwargs on to the next, down to the protocol's
        functions = [
            cls.__init__
            for cls in factory.__mro__
            if "__init__" in vars(cls) and issubclass(cls, PositionalEncoding)
        ]
        open_ended = False
    else:
        functions, open_ended = [factory], True
    options: dict[str, Any] = {}
    for function in functions:
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL or parameter.name == "self":
                continue
            if parameter.name not in ENCODING_ARGUMENTS:
                options.setdefault(parameter.name, parameter.default)
    if open_ended and any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD
        for parameter in inspect.signature(factory).parameters.values()
    ):
        return None
    return options


def _check_encoding(name: str, options: dict[str, Any]) -> None:
    try:
        known = encoding_options(name)
    except UnknownPluginError as error:
        raise ConfigError(f"[model] positional_encoding: {error}") from None
    for option in options:
        if option in ENCODING_ARGUMENTS:
            raise ConfigError(
                f"[model] positional_encoding_options: {option!r} is set by the model from "
                "[model] and [train], not an option of the encoding"
            )
        if known is not None and option not in known:
            listed = ", ".join(known) or "none"
            raise ConfigError(
                f"[model] positional_encoding_options: {name!r} has no option {option!r}"
                f"{did_you_mean(option, known)}; its options: {listed}"
            )


def _check_sequence(experiment: Experiment) -> None:
    seq_len, chunk = experiment.train.seq_len, experiment.retrieval.chunk_size
    if seq_len % chunk:
        lower = seq_len // chunk * chunk
        choices = f"{lower} or {lower + chunk}" if lower else str(chunk)
        raise ConfigError(
            f"[train] seq_len = {seq_len} is not a multiple of [retrieval] chunk_size = {chunk}"
            f" (a sequence is whole chunks): use {choices}"
        )


def _check_layers(experiment: Experiment) -> None:
    model = experiment.model
    for key, depth_key in CROSS_ATTN_LAYERS:  # the model's own rule, worded for the file
        layers, depth = getattr(model, key), getattr(model, depth_key)
        if layers is None:
            continue
        outside = layers_outside(layers, depth)
        if outside:
            raise ConfigError(
                f"[model] {key}: layer {outside[0]} is outside 1..{depth} ({depth_key} = {depth});"
                " layers count from 1"
            )
        twice = sorted({layer for layer in layers if layers.count(layer) > 1})
        if twice:
            raise ConfigError(f"[model] {key}: layer {twice[0]} is listed twice")


def _check_retrofit(experiment: Experiment) -> None:
    train = experiment.train
    if not train.retrofit:
        return
    if not train.retrieval:
        raise ConfigError(
            '[train] retrofit = true needs neighbours = "retrieved" (not "none"): '
            "RETRO-fitting trains only the parts that read the neighbours"
        )
    if not experiment.model.dec_cross_attn_layers:
        raise ConfigError(
            "[train] retrofit = true needs [model] dec_cross_attn_layers: with none, the frozen "
            "decoder leaves nothing to train"
        )
    source = train.retrofit_from
    if source is not None and not source.is_file():
        what = "is a folder, not a checkpoint file" if source.is_dir() else "does not exist"
        raise ConfigError(f"[train] retrofit_from: {source} {what}")


def _check_generate(experiment: Experiment) -> None:
    # a prompt longer than the context is the generator's to crop (it slides its window over
    # long generations anyway); an empty one has nothing to condition on
    for index, prompt in enumerate(experiment.generate.prompts):
        if not prompt.strip():
            raise ConfigError(f"[generate] prompts[{index}] is empty: give it some text")


def _check_mlflow(experiment: Experiment) -> None:
    uri = experiment.mlflow.tracking_uri
    if uri is None:
        return
    if uri.startswith("file:") or ("://" not in uri and uri not in ("databricks", "databricks-uc")):
        raise ConfigError(
            f"[mlflow] tracking_uri = {uri!r} is MLflow's deprecated file store: use "
            "sqlite:///path/to/mlflow.db or the URL of a tracking server"
        )
    tracking = _sqlite_files(uri, experiment.base_dir)
    if tracking & _sqlite_files(experiment.store.database_url, experiment.base_dir):
        raise ConfigError(
            "[mlflow] tracking_uri is the retrieval store's database: give MLflow a file "
            "of its own, e.g. sqlite:///mlflow.db"
        )


def _sqlite_files(url: str, base_dir: Path) -> set[Path]:
    """The files a ``sqlite:///`` URL may name: a relative one is read from the working folder
    by SQLAlchemy, and may be read from the experiment's folder by whoever resolves it."""
    match = re.fullmatch(r"sqlite(?:\+\w+)?:///([^?]+)(?:\?.*)?", url)
    if match is None or match.group(1) == ":memory:":
        return set()
    path = Path(match.group(1)).expanduser()
    if path.is_absolute():
        return {path.resolve()}
    return {path.resolve(), (base_dir / path).resolve()}
