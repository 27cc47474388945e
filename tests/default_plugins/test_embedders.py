"""The built-in embedders: ``sentence-transformers`` (the real MiniLM model) and ``hashing``.

The embedder contract both keep (shapes, dtype, empty batches, determinism, normalisation) is
checked by the conformance kit in tests/plugin_kit; here, what is each model's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retro_platform.default_plugins.embedders import hashing, sentence_transformer
from retro_platform.errors import ConfigError
from retro_platform.plugins import build_plugin

TEXTS = [
    "def read_file(path):\n    with open(path) as handle:\n        return handle.read()",
    "x",
    "Return the square root of x, raising ValueError for negative numbers.",
    "",
    "class HTTPServer(socketserver.TCPServer):\n    allow_reuse_address = True\n" * 6,
    "import os, sys\nimport   json",
    "Ünïcödé text — with “quotes” and 日本語",
]


def embedder(name: str, **options):
    return build_plugin("embedders", {"name": name, **options})


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- sentence-transformers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    """The default embedder (fp32), loaded once for the module."""
    model = embedder("sentence-transformers")
    model.embed(["warm up"])
    return model


@pytest.fixture(scope="module")
def minilm_fp16():
    return embedder("sentence-transformers", precision="fp16")


def test_dimension_is_known_without_loading_the_model() -> None:
    model = embedder("sentence-transformers")
    assert model.dimension == 384
    assert model._model is None
    assert model.normalized


def test_vectors_are_unit_length_float32(minilm) -> None:
    vectors = minilm.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_single_and_batched_texts_agree_and_order_is_kept(minilm) -> None:
    """Texts are sorted by length inside ``embed``; rows come back in the caller's order."""
    alone = np.concatenate([minilm.embed([text]) for text in TEXTS])
    batched = minilm.embed(TEXTS)
    assert cosines(alone, batched).min() > 1 - 1e-5
    reversed_rows = minilm.embed(TEXTS[::-1])[::-1]
    assert cosines(reversed_rows, batched).min() > 1 - 1e-5
    # distinct texts get distinct vectors, so a shuffled row would have been noticed
    vectors = minilm.embed(TEXTS)
    similarity = vectors @ vectors.T
    assert (similarity - np.eye(len(TEXTS)) * 2).max() < 0.99


def test_half_precision_stays_close_to_fp32(minilm, minilm_fp16) -> None:
    assert minilm.precision == "fp32" and minilm_fp16.precision == "fp16"
    assert cosines(minilm.embed(TEXTS), minilm_fp16.embed(TEXTS)).min() > 0.999


@pytest.mark.slow
def test_worker_processes_give_the_same_vectors_in_order() -> None:
    """Large calls are dealt to worker processes; the rows come back in the caller's order and
    equal what this process computes."""
    model = embedder("sentence-transformers", workers=2)
    assert (model.workers, model.threads) == (2, max(1, sentence_transformer._usable_cores() // 2))
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(sentence_transformer.POOL_MIN_TEXTS)]
    try:
        pooled = model.embed(texts)
        procs = model._pool._procs
        assert len(procs) == 2 and all(proc.poll() is None for proc in procs)
        local = sentence_transformer._encode(model.model, texts, model._settings())
        np.testing.assert_allclose(pooled, local, atol=1e-5)
        np.testing.assert_allclose(model.embed(texts[::-1]), pooled[::-1], atol=1e-5)
    finally:
        model.close()
    assert all(proc.returncode is not None for proc in procs)


@pytest.mark.slow
def test_a_model_that_fails_to_load_in_the_workers_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    model = embedder("sentence-transformers", model=str(tmp_path), workers=2)
    texts = ["text"] * sentence_transformer.POOL_MIN_TEXTS
    with pytest.raises(ConfigError, match="cannot load the embedding model at"):
        model.embed(texts)
    assert model._pool is None
    with pytest.raises(ConfigError, match="cannot load the embedding model at"):
        model.embed(texts[:1])  # in this process


def test_workers_follow_the_device() -> None:
    resolve = sentence_transformer._resolve_workers
    cores = sentence_transformer._usable_cores()
    assert resolve("auto", "cpu") == (min(cores, 4), max(1, cores // min(cores, 4)))
    assert resolve(1, "cpu") == (1, cores)
    assert resolve("auto", "cuda") == (1, cores)


def test_the_model_is_frozen(minilm) -> None:
    model = minilm.model
    assert not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_meaning_decides_the_nearest_text(minilm) -> None:
    query, *documents = minilm.embed(
        [
            "open a file and read its contents",
            "def read_file(path):\n    with open(path) as f:\n        return f.read()",
            "def sqrt(x):\n    return x ** 0.5",
            "class Colour(Enum):\n    RED = 1\n    GREEN = 2",
        ]
    )
    assert int(np.argmax(np.stack(documents) @ query)) == 0


def test_max_length_cuts_long_texts(minilm) -> None:
    short = embedder("sentence-transformers", max_length=8)
    long_text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu " * 4
    cut = short.embed([long_text, "alpha beta gamma delta epsilon zeta"])
    assert cut.shape == (2, 384)
    # with 8 tokens ([CLS] + 6 words + [SEP]) the long text is its first six words
    assert cosines(cut[:1], cut[1:]).item() > 0.999
    assert cosines(cut[:1], minilm.embed([long_text])).item() < 0.99


def test_max_length_beyond_the_model_is_refused() -> None:
    model = embedder("sentence-transformers", max_length=100_000)
    with pytest.raises(ConfigError, match="max_length = 100000 .* 512 positions"):
        model.embed(["text"])


def test_a_model_name_that_is_not_a_folder_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as error:
        embedder("sentence-transformers", model="sentence-transformers/all-MiniLM-L6-v2")
    message = str(error.value)
    assert "no model folder at" in message and "never downloaded" in message
    assert "\n" not in message


def test_a_folder_that_holds_no_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a model folder"):
        embedder("sentence-transformers", model=str(tmp_path))


def test_a_relative_model_folder_is_taken_from_the_experiment_folder(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "minilm").symlink_to(sentence_transformer.default_model_path())
    model = build_plugin(
        "embedders",
        {"name": "sentence-transformers", "model": "models/minilm"},
        base_dir=tmp_path,
    )
    assert model.model_path == tmp_path / "models" / "minilm"
    assert model.dimension == 384


def test_unknown_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown option 'batchsize'.*did you mean 'batch_size'"):
        embedder("sentence-transformers", batchsize=8)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match='device = "cuda" but torch sees no CUDA GPU'):
        embedder("sentence-transformers", device="cuda")


def test_dimension_from_the_files_of_other_layouts(tmp_path: Path) -> None:
    read = sentence_transformer._dimension_from_files
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 768}))
    assert read(tmp_path) == 768  # a plain transformers folder: mean pooling
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": 768, "pooling_mode": ["mean", "max"]})
    )
    (tmp_path / "2_Dense").mkdir()
    (tmp_path / "2_Dense" / "config.json").write_text(json.dumps({"out_features": 256}))
    assert read(tmp_path) == 256
    modules[2]["type"] = "some_package.CustomLayer"
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert read(tmp_path) is None  # unknown layer: the model must be loaded to know


# --- hashing ---------------------------------------------------------------------------------


def test_hashing_vectors() -> None:
    model = embedder("hashing")
    vectors = model.embed(TEXTS)
    assert model.dimension == 256 and model.normalized
    assert vectors.shape == (len(TEXTS), 256) and vectors.dtype == np.float32
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms[[i for i, text in enumerate(TEXTS) if text]], 1.0, rtol=1e-5)
    assert norms[TEXTS.index("")] == 0.0  # a text with no feature: the zero vector
    assert model.embed([]).shape == (0, 256)


def test_hashing_options() -> None:
    model = embedder("hashing", dimension=64, ngram=4, words=False)
    assert model.embed(["hello"]).shape == (1, 64)
    with pytest.raises(ConfigError, match="ngram >= 1 or words = true"):
        embedder("hashing", ngram=0, words=False)
    with pytest.raises(ConfigError) as error:
        embedder("hashing", dimensionn=3)
    assert "'dimensionn'" in str(error.value) and "did you mean 'dimension'" in str(error.value)


def test_hashing_normalises_case_and_whitespace_the_same_for_every_text() -> None:
    model = embedder("hashing")
    a, b, c = model.embed(["Open  the\tFILE\n", "open the file", "close the door"])
    assert np.array_equal(a, b)
    assert a @ c < 0.9


def test_hashing_single_and_batched_texts_are_identical() -> None:
    model = embedder("hashing")
    many = [f"text number {i} with {'word ' * (i % 7)}" for i in range(hashing._BLOCK + 10)]
    batched = model.embed(many)
    for i in (0, 1, hashing._BLOCK - 1, hashing._BLOCK, len(many) - 1):
        assert np.array_equal(model.embed([many[i]])[0], batched[i])


def test_hashing_similar_texts_are_near() -> None:
    model = embedder("hashing")
    query, near, far = model.embed(
        [
            "def parse_header(line): return line.split(':')",
            "def parse_headers(lines): return [line.split(':') for line in lines]",
            "The quick brown fox jumps over the lazy dog.",
        ]
    )
    assert query @ near > 0.5 > query @ far


def test_hashing_is_the_same_in_every_process() -> None:
    """No salted ``hash()``: another interpreter with another hash seed gets the same bits."""
    script = (
        "import sys, numpy as np\n"
        "from retro_platform.plugins import build_plugin\n"
        "v = build_plugin('embedders', {'name': 'hashing'}).embed(['Hello, world', 'naïve café'])\n"
        "sys.stdout.write(v.tobytes().hex())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    here = embedder("hashing").embed(["Hello, world", "naïve café"])
    assert bytes.fromhex(out) == here.tobytes()


def test_hashing_features_are_pinned() -> None:
    """The hash is part of every stored hashing embedding: changing it must be deliberate.

    " hello world " has 11 byte trigrams and 2 words: 13 signed counts in 16 buckets.
    """
    vector = embedder("hashing", dimension=16).embed(["Hello world"])[0]
    counts = np.round(vector * np.sqrt(13)).astype(int).tolist()
    assert counts == [0, 0, 1, -1, -1, 1, 0, 0, 0, 0, 1, 2, 2, 0, 0, 0]


@pytest.mark.parametrize("name", ["sentence-transformers", "hashing"])
def test_every_option_is_documented(name: str) -> None:
    from retro_platform.plugins import get_registration

    docs = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    section = docs.split(f"#### `{name}`", 1)[1].split("\n#", 1)[0]
    for option in get_registration("embedders", name).factory.Options.model_fields:
        assert f"| `{option}` |" in section, f"docs/plugins.md: {name} option {option}"
