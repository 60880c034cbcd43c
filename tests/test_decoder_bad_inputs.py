"""Each bad decoder input gives one clear error naming the file / tensor."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures import make_tiny_hf_decoder
from perank_jax.models.decoder import DecoderConfig, DecoderConfigError
from perank_jax.weights.decoder import load_decoder
from perank_jax.weights.io import WeightError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_ok")
    make_tiny_hf_decoder(d, "llama")
    return d


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(d, fn):
    t = load_file(str(d / "model.safetensors"))
    fn(t)
    save_file(t, str(d / "model.safetensors"))


def test_unknown_model_type_is_refused(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DecoderConfigError, match=r"config.json: model_type 'gpt_neox' is not supported"):
        load_decoder(d)


def test_unimplemented_rope_scaling_is_refused():
    hf = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
              num_attention_heads=2, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(DecoderConfigError, match="rope type 'yarn' is not implemented"):
        DecoderConfig.from_hf(hf)


def test_missing_unexpected_and_wrong_shape_tensors_listed_in_one_error(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")

    def corrupt(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((5, 32), np.float32)
    _edit_tensors(d, corrupt)
    with pytest.raises(WeightError) as e:
        load_decoder(d)
    msg = str(e.value)
    assert "missing (1): ['model.layers.1.mlp.up_proj.weight']" in msg
    assert "unexpected (1): ['model.layers.0.extra.weight']" in msg
    assert "model.layers.0.self_attn.k_proj.weight: file (5, 32) != expected (16, 32)" in msg


def test_nan_weights_are_refused(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    _edit_tensors(d, lambda t: t["model.layers.1.mlp.down_proj.weight"].__setitem__((0, 0), np.nan))
    with pytest.raises(WeightError, match=r"parameter down .* contains NaN or Inf"):
        load_decoder(d)


def test_pickle_only_directory_is_refused_without_loading(tiny_dir, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(tiny_dir / "config.json", d)
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(WeightError, match=r"only pickle weights found \(pytorch_model.bin\).*safetensors only"):
        load_decoder(d)


def test_truncated_safetensors_is_refused(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(WeightError, match=r"model.safetensors: not a valid safetensors file \(tensor .* extends past the end of the file"):
        load_decoder(d)


def test_garbage_safetensors_header_is_refused(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "model.safetensors").write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}")
    with pytest.raises(WeightError, match="not a valid safetensors file .*invalid JSON in header"):
        load_decoder(d)


def test_missing_config_and_missing_path_are_named(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(WeightError, match="config.json not found"):
        load_decoder(d)
    with pytest.raises(WeightError, match="not found"):
        load_decoder(tmp_path / "nowhere")


def test_sharded_index_with_missing_shard_is_refused(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    t = load_file(str(d / "model.safetensors"))
    keys = sorted(t)
    half = len(keys) // 2
    save_file({k: t[k] for k in keys[:half]}, str(d / "model-00001-of-00002.safetensors"))
    save_file({k: t[k] for k in keys[half:]}, str(d / "model-00002-of-00002.safetensors"))
    (d / "model.safetensors").unlink()
    wm = {k: ("model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors")
          for i, k in enumerate(keys)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    ids = np.arange(12).reshape(2, 6)
    np.testing.assert_array_equal(np.asarray(load_decoder(d).logits(ids)),
                                  np.asarray(load_decoder(tiny_dir).logits(ids)))
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightError, match="shard files that are missing"):
        load_decoder(d)


def test_non_gguf_file_is_refused(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF" + b"\x00" * 10)
    with pytest.raises(WeightError, match="not a readable GGUF file"):
        load_decoder(f)


def test_gguf_tokenizer_conversion_failure_is_reported_not_swallowed(smollm2_gguf, monkeypatch):
    from perank_jax.inference.generate import chat_generate
    from perank_jax.weights.gguf import GGUFSource

    def broken(self):
        raise ValueError("unsupported tokenizer.ggml.model 'made-up'")
    monkeypatch.setattr(GGUFSource, "tokenizer", broken)
    with pytest.raises(ValueError, match=r"GGUF tokenizer could not be converted .*made-up"):
        chat_generate(str(smollm2_gguf), "hi", max_new_tokens=1)


@pytest.mark.parametrize("loader", ["decoder", "encoder", "perank"])
def test_corrupt_or_missing_config_json_is_one_error_naming_the_file(loader, tmp_path):
    from perank_jax.models.encoder import EncoderError
    from perank_jax.weights.perank_config import PERankConfig
    from perank_jax.weights.decoder import load_decoder
    from perank_jax.weights.encoder import load_encoder
    load, err, missing = {"decoder": (load_decoder, WeightError, WeightError),
                          "encoder": (load_encoder, EncoderError, EncoderError),
                          "perank": (PERankConfig.read, ValueError, FileNotFoundError)}[loader]
    with pytest.raises(missing, match="config.json not found"):
        load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(err, match=r"config.json: invalid JSON"):
        load(tmp_path)
