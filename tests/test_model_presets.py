"""Model presets (configs/models/*.yaml) hold the shapes of named models once; tools build from them."""
from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perank_jax.core.config import ConfigError
from perank_jax.models.presets import (PresetError, decoder_preset, encoder_preset, load_preset, preset_names,
                                       random_decoder)

ROOT = Path(__file__).resolve().parent.parent


def test_the_smollm2_preset_is_the_packaged_decoders_shape(smollm2_gguf):
    from perank_jax.weights.gguf import GGUFSource
    real, preset = GGUFSource(smollm2_gguf).config, decoder_preset("smollm2-135m")
    assert preset.rms_norm_eps == pytest.approx(real.rms_norm_eps, rel=1e-6)     # GGUF stores it as float32
    assert preset == real.__class__(**{**real.__dict__, "rms_norm_eps": preset.rms_norm_eps})


def test_the_minilm_preset_is_the_packaged_encoders_shape(minilm_dir):
    from perank_jax.core.config_files import read_config_json
    from perank_jax.models.encoder import EncoderConfig
    real = EncoderConfig.from_hf(read_config_json(minilm_dir))
    assert encoder_preset("minilm-l6") == real.__class__(**{**real.__dict__, "name": ""})


def test_the_mistral_preset_has_the_released_vocabulary_and_a_layer_count_can_be_cut():
    full = decoder_preset("mistral-7b")
    assert (full.vocab_size, full.hidden_size, full.intermediate_size, full.num_layers, full.num_kv_heads) == \
        (32000, 4096, 14336, 32, 8)
    short = decoder_preset("mistral-7b", layers=2)
    assert short.num_layers == 2 and short.__class__(**{**short.__dict__, "num_layers": 32}) == full
    with pytest.raises(PresetError, match="layers must be an integer >= 1"):
        decoder_preset("mistral-7b", layers=0)
    assert "[INST]" in load_preset("mistral-7b").chat_template


def test_an_unknown_or_mismatched_preset_is_one_error_naming_it(tmp_path):
    with pytest.raises(PresetError, match=r"no-such: no such model preset \(known: .*mistral-7b"):
        load_preset("no-such")
    with pytest.raises(PresetError, match="minilm-l6: is an encoder preset"):
        decoder_preset("minilm-l6")
    with pytest.raises(PresetError, match="mistral-7b: is a decoder preset"):
        encoder_preset("mistral-7b")
    both = tmp_path / "both.yaml"
    both.write_text(f"base: {ROOT / 'configs/models/mistral-7b.yaml'}\n"
                    "encoder: {arch: bert, vocab_size: 8, hidden_size: 8, num_layers: 1, num_heads: 1,"
                    " intermediate_size: 8, max_position_embeddings: 8}\n")
    with pytest.raises(PresetError, match=f"{both}: .*exactly one model"):
        load_preset(str(both))
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: x\ndecoder: {vocab_size: 8, hidden_sise: 8}\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: decoder: unknown key\(s\) \['hidden_sise'\]"):
        load_preset(str(typo))


def test_a_random_decoder_is_built_in_the_asked_dtype_with_the_presets_shapes():
    cfg = decoder_preset("tiny-mistral", layers=1)
    leaves = jax.tree.leaves(nnx.state(random_decoder(cfg, jnp.bfloat16, seed=1)))
    again = jax.tree.leaves(nnx.state(random_decoder(cfg, jnp.bfloat16, seed=1)))
    assert leaves and all(x.dtype == jnp.bfloat16 for x in leaves)
    table = [x for x in leaves if x.shape == (cfg.vocab_size, cfg.hidden_size)]
    assert table and 0.015 < float(np.std(np.asarray(table[0], np.float32))) < 0.025      # N(0, 0.02)
    assert all(np.array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32)) for x, y in zip(leaves, again))


def test_model_shapes_are_written_once_in_the_presets_not_in_tools_or_the_package():
    """No tool or package module restates a preset's vocabulary or FFN width (the Mistral-7B shape)."""
    assert {"mistral-7b", "tiny-mistral", "smollm2-135m", "minilm-l6", "mpnet-base", "jina-v2-base"} <= \
        set(preset_names())
    files = [*ROOT.glob("tools/*.py"), *ROOT.glob("tools/*.sh"), *ROOT.glob("perank_jax/**/*.py")]
    pattern = re.compile(r"\b(32000|32002|14336)\b")
    hits = [f"{f.relative_to(ROOT)}:{i + 1}" for f in files
            for i, line in enumerate(f.read_text().splitlines()) if pattern.search(line)]
    assert not hits, hits
