"""No positional encoding (NoPE): causal masking alone tells the decoder about order
(Kazemnejad et al. 2023); the encoder sees its neighbours as a bag of tokens."""

from __future__ import annotations

from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PositionalEncoding


class NoPositionalEncoding(PositionalEncoding):
    """The identity at every point of the protocol."""


@hookimpl
def register_positional_encodings(register):
    register("nope", NoPositionalEncoding)
