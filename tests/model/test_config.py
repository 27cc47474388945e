"""RetroConfig: RETRO's arguments, normalised and checked once, and what checkpoints store."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest

from retro_platform.model.config import RetroConfig, layers_outside
from retro_platform.model.retro import RETRO
from tests.model.factory import small_retro


def test_the_config_has_every_argument_of_the_model_with_its_default():
    parameters = list(inspect.signature(RETRO.__init__).parameters.values())[1:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)
    fields = dataclasses.fields(RetroConfig)
    assert [p.name for p in parameters] == [f.name for f in fields]
    assert [p.default for p in parameters] == [f.default for f in fields]


def test_the_config_is_normalised_and_frozen():
    options = {"base": 100}
    config = RetroConfig(
        dec_cross_attn_layers=[1, 3],
        enc_cross_attn_layers=[2],
        chunk_size=16,
        positional_encoding_options=options,
    )
    assert config.dec_cross_attn_layers == (1, 3) and config.enc_cross_attn_layers == (2,)
    assert config.neighbour_len == 32  # the chunk plus its continuation
    options["base"] = 1
    assert config.positional_encoding_options == {"base": 100}
    assert RetroConfig().positional_encoding_options == {}
    assert RetroConfig(enc_depth=3).encoder_cross_layers == (1, 2, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.chunk_size = 8  # type: ignore[misc]


def test_the_model_reads_its_settings_from_its_config():
    model = small_retro(neighbour_len=12)
    assert isinstance(model.config, RetroConfig)
    assert (model.chunk_size, model.neighbour_len, model.max_seq_len, model.pad_id) == (
        8,
        12,
        64,
        0,
    )
    assert small_retro().neighbour_len == 16


def test_a_checkpoint_stores_the_same_plain_dict_as_before():
    # what `dict(model.config)` gave before RetroConfig: an existing checkpoint still resumes
    before = dict(
        num_tokens=50, max_seq_len=64, enc_dim=24, enc_depth=2, enc_cross_attn_layers=None,
        dec_depth=3, dec_cross_attn_layers=(1, 3), heads=2, dec_dim=32, dim_head=12,
        enc_attn_dropout=0.0, enc_ff_dropout=0.0, dec_attn_dropout=0.0, dec_ff_dropout=0.0,
        ff_mult=4, chunk_size=8, neighbour_len=16, pad_id=0, positional_encoding="rotary",
        positional_encoding_options={}, checkpoint_activations=False, loss_chunk_tokens=2048,
    )  # fmt: skip
    stored = small_retro().config.as_dict()
    assert stored == before and type(stored) is dict
    assert type(stored["dec_cross_attn_layers"]) is tuple


def test_layers_outside_their_stack():
    assert layers_outside((0, 1, 2, 3), 2) == [0, 3]
    assert layers_outside(None, 2) == [] and layers_outside((), 0) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(enc_cross_attn_layers=(3,), enc_depth=2), r"enc_cross_attn_layers \[3\] outside"),
        (dict(enc_depth=-1), "non-negative integer"),
        (dict(num_tokens=2.5), "positive integer"),
    ],
)
def test_the_config_refuses_bad_values_without_building_a_model(overrides, message):
    with pytest.raises(ValueError, match=message):
        RetroConfig(**overrides)


def test_the_config_imports_no_torch():
    code = "import sys, retro_platform.model.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
