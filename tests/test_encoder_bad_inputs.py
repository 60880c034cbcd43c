"""Bad encoder inputs give one clear error each (a ValueError subclass naming the problem)."""
import json
import shutil

import pytest

import perank_jax
from perank_jax.models.encoder import EncoderError
from perank_jax.weights.io import WeightError
from fixtures import TOKENIZER_FILES, tiny_bert


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, minilm_dir):
    d = tmp_path_factory.mktemp("bert")
    tiny_bert(d, minilm_dir)
    return d


def _copy(src, dst, skip=()):
    shutil.copytree(src, dst, ignore=lambda _d, names: [n for n in names if n in skip])
    return dst


def test_empty_text_is_refused_with_its_index(bert_dir):
    enc = perank_jax.load_encoder(bert_dir, max_length=32)
    with pytest.raises(EncoderError, match=r"text 1 is empty"):
        enc.encode(["fine", "   ", "also fine"])
    with pytest.raises(EncoderError, match="list of texts"):
        enc.encode("a single string")
    assert enc.encode([]).shape == (0, enc.dim)


def test_unknown_architecture_is_refused(bert_dir, tmp_path):
    d = _copy(bert_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2Model"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EncoderError, match=r"unknown encoder architecture model_type='gpt2'"):
        perank_jax.load_encoder(d)


def test_missing_tokenizer_files_are_refused(bert_dir, tmp_path):
    d = _copy(bert_dir, tmp_path / "m", skip=TOKENIZER_FILES)
    with pytest.raises(EncoderError, match="no tokenizer files"):
        perank_jax.load_encoder(d)


def test_pickle_only_weights_are_refused(bert_dir, tmp_path):
    d = _copy(bert_dir, tmp_path / "m", skip=("model.safetensors",))
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(WeightError, match="only pickle weights"):
        perank_jax.load_encoder(d)


def test_max_length_beyond_position_table_is_refused(bert_dir):
    with pytest.raises(EncoderError, match="exceeds what the bert position table supports"):
        perank_jax.load_encoder(bert_dir, max_length=129)


def test_unknown_pooling_and_dtype_are_refused(bert_dir):
    with pytest.raises(EncoderError, match="unknown pooling 'max'"):
        perank_jax.load_encoder(bert_dir, pooling="max")
    with pytest.raises(EncoderError, match="dtype must be one of"):
        perank_jax.load_encoder(bert_dir, dtype="int8")
