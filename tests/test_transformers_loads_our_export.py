"""transformers loads what perank-jax EXPORTS (levanter-style round trip, export direction).

HF model (torch, random) -> save_pretrained -> our loader -> our exporter (the PE-Rank
checkpoint writer `weights.perank.save_checkpoint`, or the stage-2 training export
`train.export.export`) -> `transformers.AutoModelForCausalLM.from_pretrained` (no remote
code) -> logits equal the original torch model's and our JAX model's within 1e-4 of the
logit scale (float32). The exported weights are changed in JAX before export (noise on
every parameter; a merged LoRA in the stage-2 export), so the tests see the exported
values, not a copy of the input files.
"""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import perank_jax
from fixtures import make_tiny_hf_decoder
from perank_jax.models.decoder import param_specs
from perank_jax.models.projector import build_projector
from perank_jax.weights.perank import save_checkpoint

TOL = 1e-4
MODEL_CONFIGS = {
    # GQA, head_dim (12) != hidden/heads (48/6 = 8), sliding window (5) shorter than the sequence
    "mistral_gqa_window_untied": dict(model_type="mistral", hidden_size=48, num_attention_heads=6,
                                      num_key_value_heads=2, head_dim=12, sliding_window=5, rms_norm_eps=1e-5),
    "mistral_gqa_tied": dict(model_type="mistral", num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=True, rope_theta=1e6),
    # non-default eps and special token ids (HF defaults: 1e-6, 1, 2), so dropping them from config.json shows
    "llama_gqa_untied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                             bos_token_id=5, eos_token_id=6),
    # one KV head (MQA), head_dim 16 != 32/4, tied embeddings
    "llama_mqa_tied_headdim": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                   tie_word_embeddings=True, rope_theta=500.0),
}


# ----------------------------------------------------------------------------- helpers
def _batch(vocab, seed=0, lengths=(11, 7, 3)):
    """Right-padded token ids and mask (longest row 11 > the sliding window 5)."""
    rng = np.random.RandomState(seed)
    T = max(lengths)
    ids = rng.randint(0, vocab, (len(lengths), T))
    mask = np.arange(T)[None] < np.asarray(lengths)[:, None]
    return ids, mask


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()


_jax_logits = nnx.jit(lambda model, ids, mask: model(ids, mask))


def jax_logits(model, ids, mask):
    return np.asarray(_jax_logits(model, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool)))


def rel_err(got, want, mask):
    return float(np.abs(got - want)[mask].max() / np.abs(want[mask]).max())


def load_hf(path, arch=None):
    """Our export as transformers reads it: AutoModelForCausalLM, or the named architecture class."""
    cls = getattr(transformers, arch) if arch else transformers.AutoModelForCausalLM
    return cls.from_pretrained(str(path), dtype=torch.float32, trust_remote_code=False).eval()


def export_decoder(model, out_dir, tokenizer, **kw):
    """Our export: a PE-Rank checkpoint directory (decoder in HF layout + projector + tokenizer)."""
    proj = build_projector("linear", 8, model.cfg.hidden_size, rngs=nnx.Rngs(0))
    kw.setdefault("model_type", model.cfg.model_type)
    return save_checkpoint(out_dir, model, proj, tokenizer, **kw)


def perturb_every_parameter(model, seed=1, scale=0.5):
    """Add noise (scale x the parameter's own std, norms included) to every decoder weight, in place."""
    rng = np.random.default_rng(seed)
    for name in param_specs(model.cfg):
        var = getattr(model, name)
        w = np.asarray(var[...])
        var.set_value(jnp.asarray(w + scale * (w.std() + 1e-3) * rng.normal(size=w.shape), w.dtype))


@pytest.fixture(scope="module")
def word_tokenizer():
    from fixtures import make_tokenizer
    return make_tokenizer()


# ----------------------------------------------------------------------------- a. HF -> ours -> export -> HF
@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_transformers_reads_our_export_as_the_original_model_and_our_modified_weights(tmp_path, name,
                                                                                       word_tokenizer):
    kw = dict(MODEL_CONFIGS[name])
    model_type = kw.pop("model_type")
    ref = make_tiny_hf_decoder(tmp_path / "src", model_type, seed=7, **kw)
    dec = perank_jax.load_decoder(tmp_path / "src")
    ids, mask = _batch(dec.config.vocab_size)
    want = _torch_logits(ref, ids, mask)

    # unmodified: transformers on our export == the original torch model == our JAX model
    hf = load_hf(export_decoder(dec.model, tmp_path / "export", word_tokenizer))
    assert type(hf).__name__ == type(ref).__name__
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "vocab_size",
                  "max_position_embeddings", "bos_token_id", "eos_token_id") + (
                      ("sliding_window",) if model_type == "mistral" else ()):
        assert getattr(hf.config, field) == getattr(ref.config, field), field
    assert hf.config.rope_parameters["rope_theta"] == ref.config.rope_parameters["rope_theta"]
    got = _torch_logits(hf, ids, mask)
    ours = jax_logits(dec.model, ids, mask)
    assert rel_err(got, want, mask) <= TOL, f"{name}: export vs original {rel_err(got, want, mask):.2e}"
    assert rel_err(ours, want, mask) <= TOL

    # modified in JAX: transformers sees the modified values we exported, not the input files
    perturb_every_parameter(dec.model)
    hf2 = load_hf(export_decoder(dec.model, tmp_path / "export2", word_tokenizer))
    got2 = _torch_logits(hf2, ids, mask)
    ours2 = jax_logits(dec.model, ids, mask)
    assert rel_err(ours2, want, mask) > 0.05                 # the perturbation shows in the logits
    assert rel_err(got2, ours2, mask) <= TOL, f"{name}: export vs JAX {rel_err(got2, ours2, mask):.2e}"
    if kw.get("tie_word_embeddings"):                        # tied: lm_head follows the exported embedding
        np.testing.assert_array_equal(hf2.lm_head.weight.detach().numpy(), np.asarray(dec.model.embedding[...]))


# ----------------------------------------------------------------------------- b. PE-Rank checkpoints
STAGE2_CASES = {
    # LoRA: the export merges the adapters into the decoder; model_type llama
    "llama_lora": dict(model_type="llama", lora_rank=4),
    # full fine-tune: the decoder parameters themselves
    "mistral_full": dict(model_type="mistral", lora_rank=0, sliding_window=5),
}


@pytest.fixture(scope="module", params=sorted(STAGE2_CASES))
def stage2_export(request, tmp_path_factory, word_tokenizer):
    """A stage-2 PE-Rank export written by train.export.export from changed parameters:
    (export dir, Run, expected decoder params (LoRA merged / changed), case)."""
    from fixtures import stage2_records, table_file, write_jsonl

    from perank_jax.train.config import load_train_config
    from perank_jax.train.export import export
    from perank_jax.train.loop import Run
    case = dict(STAGE2_CASES[request.param])
    d = tmp_path_factory.mktemp(f"stage2_{request.param}")
    word_tokenizer.save_pretrained(str(d / "tok"))
    window = case.pop("sliding_window", None)
    extra = {"sliding_window": window} if case["model_type"] == "mistral" else {}
    make_tiny_hf_decoder(d / "dec", case["model_type"], seed=3, vocab_size=len(word_tokenizer),
                         tokenizer_dir=d / "tok", bos_token_id=1, eos_token_id=2, initializer_range=0.1, **extra)
    records, table = stage2_records(8, seed=0)
    write_jsonl(d / "train.jsonl", records)
    table_file(d / "emb.npz", table)
    cfg = load_train_config("configs/tiny.stage2.yaml", [
        f"model.decoder={d / 'dec'}", f"data.train={d / 'train.jsonl'}", f"data.embeddings={d / 'emb.npz'}",
        f"output_dir={d / 'run'}", "data.buckets=[64]", "data.max_len=64", "optim.max_steps=1",
        f"lora.rank={case['lora_rank']}"])
    run = Run(cfg)
    params = dict(run.trainer.init_state()["params"])
    rng = np.random.default_rng(5)
    noisy = lambda x: x + jnp.asarray(0.3 * rng.normal(size=x.shape), x.dtype)
    base = nnx.to_pure_dict(nnx.state(run.decoder.model))
    if case["lora_rank"]:
        assert "lora" in params and "decoder" not in params
        params["lora"] = {n: {"a": ab["a"], "b": noisy(ab["b"])} for n, ab in params["lora"].items()}
        scale = cfg.lora.alpha / cfg.lora.rank              # W + alpha/r * A @ B, A [L, in, r], B [L, r, out]
        expected = dict(base)
        for n, ab in params["lora"].items():
            delta = np.einsum("lir,lro->lio", np.asarray(ab["a"], np.float64), np.asarray(ab["b"], np.float64))
            expected[n] = (np.asarray(base[n], np.float64) + scale * delta.reshape(base[n].shape)).astype(np.float32)
    else:
        assert "decoder" in params and "lora" not in params
        params["decoder"] = {n: noisy(w) for n, w in params["decoder"].items()}
        expected = params["decoder"]
    out = export(run, params, d / "run" / "export")
    return out, run, {k: np.asarray(v) for k, v in expected.items()}, request.param


def _decoder_with(run, values):
    """A copy of the run's decoder with the given parameter values."""
    gd, state = nnx.split(run.decoder.model)
    pure = nnx.to_pure_dict(state)
    pure.update({k: jnp.asarray(v) for k, v in values.items()})
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(gd, state)


def test_transformers_loads_stage2_export_decoder_with_the_trained_changes(stage2_export):
    out, run, expected, case = stage2_export
    conf = json.loads((out / "config.json").read_text())
    arch = conf["architectures"][0]
    assert conf["model_type"] in ("mistral", "llama")       # not the released `embed_mistral` label
    hf = load_hf(out)                                        # AutoModelForCausalLM
    assert type(hf).__name__ == arch
    ids, mask = _batch(len(run.tokenizer), seed=2)
    got = _torch_logits(hf, ids, mask)
    ours = jax_logits(_decoder_with(run, expected), ids, mask)
    base = jax_logits(run.decoder.model, ids, mask)
    assert rel_err(base, ours, mask) > 0.05                  # LoRA / fine-tune changes are visible
    assert rel_err(got, ours, mask) <= TOL, f"{case}: export vs JAX {rel_err(got, ours, mask):.2e}"
    if case.startswith("mistral"):
        assert hf.config.sliding_window == 5 < ids.shape[1]
    # the projector rides along under model.projector.* and is the only thing transformers leaves unused
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        extra = set(f.keys()) - set(hf.state_dict())
    assert extra and all(k.startswith("model.projector.") for k in extra), extra


def test_stage2_export_tokenizer_loads_with_autotokenizer_and_encodes_the_same(stage2_export):
    from perank_jax.listwise.prompts import PLACEHOLDER, RANK
    out, run, _, _ = stage2_export
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ours = run.tokenizer
    for special in (PLACEHOLDER, RANK):
        assert tok.convert_tokens_to_ids(special) == ours.convert_tokens_to_ids(special) != tok.unk_token_id
    msgs = [{"role": "user", "content": f"topic t1 : [{PLACEHOLDER}] [{PLACEHOLDER}] topic t1"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == ours.apply_chat_template(msgs, tokenize=False)
    text += f" {RANK} {RANK}"
    assert tok(text, add_special_tokens=False)["input_ids"] == ours(text, add_special_tokens=False)["input_ids"]
    assert len(tok) == len(ours) <= hf_vocab(out)


def hf_vocab(path):
    return json.loads((path / "config.json").read_text())["vocab_size"]


# ----------------------------------------------------------------------------- c. real weights
@pytest.mark.slow
def test_transformers_reads_our_export_of_smollm2_gguf_with_the_same_logits(tmp_path):
    from perank_jax.weights.packaged import PackagedWeightsMissing, smollm2_gguf
    try:
        gguf = smollm2_gguf()
    except PackagedWeightsMissing as e:
        pytest.skip(str(e))
    dec = perank_jax.load_decoder(gguf)                 # dequantised straight from the GGUF, no HF dir
    assert dec.config.tie_word_embeddings and dec.tokenizer is not None
    out = export_decoder(dec.model, tmp_path / "smol", dec.tokenizer)
    hf = load_hf(out)
    assert type(hf).__name__ == "LlamaForCausalLM"
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == dec.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = np.asarray([ids])
    mask = np.ones(ids.shape, bool)
    got = _torch_logits(hf, ids, mask)
    ours = np.asarray(dec.logits(ids, mask))
    assert rel_err(got, ours, mask) <= TOL, rel_err(got, ours, mask)   # measured ~3e-6
    assert got[0, -1].argmax() == ours[0, -1].argmax()
