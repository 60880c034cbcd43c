"""The JAX decoder equals HF transformers (torch) on tiny random models saved with save_pretrained."""
import numpy as np
import pytest
import torch

from fixtures import make_tiny_hf_decoder
from perank_jax.weights.decoder import load_decoder

CONFIGS = {
    # KV heads 1, sliding window (5) shorter than the sequence, head_dim != hidden/heads, untied
    "mistral_mqa_window_headdim": dict(model_type="mistral", num_attention_heads=6, num_key_value_heads=1,
                                       hidden_size=48, head_dim=12, sliding_window=5),
    # KV heads 2 (GQA), no window, untied
    "mistral_gqa": dict(model_type="mistral", num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6),
    # full KV heads (MHA), tied embeddings
    "llama_mha_tied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4,
                           tie_word_embeddings=True),
    # GQA with head_dim 16 != 32/4, eps and theta non-default
    "llama_gqa_headdim": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              rms_norm_eps=1e-6, rope_theta=500.0),
}


def _padded_batch(vocab, seed=0, B=4, T=13):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab, (B, T))
    lengths = np.array([T, 9, 4, 1])[:B]
    mask = np.arange(T)[None] < lengths[:, None]
    return ids, mask


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_hf_on_right_padded_batch(tmp_path, name):
    kw = dict(CONFIGS[name])
    model_type = kw.pop("model_type")
    ref_model = make_tiny_hf_decoder(tmp_path, model_type, seed=hash(name) % 1000, **kw)
    dec = load_decoder(tmp_path, dtype="float32")
    ids, mask = _padded_batch(dec.config.vocab_size)
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
    out = np.asarray(dec.logits(ids, mask))
    rel = np.abs(out - ref)[mask].max() / np.abs(ref[mask]).max()
    assert rel <= 1e-4, f"{name}: max|diff|/max|ref| = {rel:.2e}"
    if kw.get("sliding_window"):
        assert dec.config.sliding_window == kw["sliding_window"] < ids.shape[1]


@pytest.mark.parametrize("name", ["mistral_mqa_window_headdim", "llama_gqa_headdim"])
def test_prefill_then_cached_decode_equals_full_forward(tmp_path, name):
    kw = dict(CONFIGS[name])
    model_type = kw.pop("model_type")
    make_tiny_hf_decoder(tmp_path, model_type, **kw)
    dec = load_decoder(tmp_path)
    B, T, P = 3, 12, 5            # prefill P tokens (right-padded rows), then decode one by one
    rng = np.random.RandomState(1)
    ids = rng.randint(0, dec.config.vocab_size, (B, T))
    prompt_len = np.array([5, 3, 1])
    # full forward over each row's prompt followed by its decoded tokens (contiguous positions)
    full_rows = [np.concatenate([ids[b, :prompt_len[b]], ids[b, P:]]) for b in range(B)]
    x = dec.embed(ids)
    cache = dec.init_cache(B, T)
    pos = np.broadcast_to(np.arange(P), (B, P))
    h, cache = dec.forward(x[:, :P], pos, np.arange(P)[None] < prompt_len[:, None], cache)
    steps = [np.asarray(h)[np.arange(B), prompt_len - 1]]
    for t in range(P, T):
        p = (prompt_len + t - P)[:, None]
        h, cache = dec.forward(x[:, t:t + 1], p, np.ones((B, 1), bool), cache)
        steps.append(np.asarray(h)[:, 0])
    got = np.stack(steps, 1)                                    # [B, 1 + T - P, D]
    for b in range(B):
        row = full_rows[b][None]
        hf, _ = dec.forward(dec.embed(row), np.arange(row.shape[1])[None])
        want = np.asarray(hf)[0, prompt_len[b] - 1:]
        assert np.abs(got[b] - want).max() <= 1e-5


def test_bf16_compute_stays_close_to_fp32(tmp_path):
    make_tiny_hf_decoder(tmp_path, "mistral", num_attention_heads=4, num_key_value_heads=2)
    ids, mask = _padded_batch(128, seed=3)
    f32 = np.asarray(load_decoder(tmp_path, dtype="float32").logits(ids, mask))
    b16 = load_decoder(tmp_path, dtype="bfloat16")
    assert b16.model.embedding[...].dtype == np.dtype("bfloat16")
    out = np.asarray(b16.logits(ids, mask))
    assert out.dtype == np.float32
    rel = np.abs(out - f32)[mask].max() / np.abs(f32[mask]).max()
    assert rel < 3e-2, rel                                       # measured ~1e-2 (bf16 has 8 mantissa bits)
    # fp32 master weights with bf16 compute
    mixed = load_decoder(tmp_path, dtype="bfloat16", param_dtype="float32")
    assert mixed.model.q[...].dtype == np.float32
    rel_mixed = np.abs(np.asarray(mixed.logits(ids, mask)) - f32)[mask].max() / np.abs(f32[mask]).max()
    assert rel_mixed < 3e-2, rel_mixed


@pytest.mark.parametrize("mesh_shape", [(2, 1, 4), (1, 2, 4)])
def test_forward_on_2x4_mesh_equals_single_device(tmp_path, mesh_shape):
    from perank_jax.core.sharding import make_mesh
    make_tiny_hf_decoder(tmp_path, "mistral", num_attention_heads=8, num_key_value_heads=4,
                         hidden_size=64, intermediate_size=128)
    ids, mask = _padded_batch(128, seed=5)
    single = np.asarray(load_decoder(tmp_path).logits(ids, mask))
    mesh = make_mesh(mesh_shape)
    sharded = load_decoder(tmp_path, mesh=mesh)
    q = sharded.model.q[...]
    assert len(q.sharding.device_set) == 8 and q.sharding.spec[2] == "tensor"
    out = sharded.logits(ids, mask)
    np.testing.assert_allclose(np.asarray(out)[mask], single[mask], rtol=0, atol=1e-5 * np.abs(single).max())


def test_cached_decoding_on_mesh_keeps_kv_heads_sharded_and_matches_single_device(tmp_path):
    from perank_jax.core.sharding import make_mesh
    make_tiny_hf_decoder(tmp_path, "mistral", num_attention_heads=8, num_key_value_heads=4,
                         hidden_size=64, intermediate_size=128)
    ids, mask = _padded_batch(128, seed=6)
    B, P = ids.shape[0], 6
    outs = []
    for mesh in (None, make_mesh((2, 1, 4))):
        dec = load_decoder(tmp_path, mesh=mesh)
        x = dec.embed(ids)
        cache = dec.init_cache(B, P + 2)
        h, cache = dec.forward(x[:, :P], np.broadcast_to(np.arange(P), (B, P)), np.ones((B, P), bool), cache)
        h2, cache = dec.forward(x[:, P:P + 1], np.full((B, 1), P), np.ones((B, 1), bool), cache)
        if mesh is not None:          # [layers, batch, cache_seq, kv_heads, head_dim]: batch/data, heads/tensor
            spec = cache.k.sharding.spec
            assert "data" in np.atleast_1d(spec[1]) and spec[3] == "tensor" and len(cache.k.sharding.device_set) == 8
        outs.append(np.concatenate([np.asarray(h), np.asarray(h2)], 1))
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-5 * np.abs(outs[0]).max())


def test_unrolled_layers_give_the_rolled_logits_and_cached_steps(tmp_path):
    kw = dict(CONFIGS["mistral_mqa_window_headdim"])
    make_tiny_hf_decoder(tmp_path, kw.pop("model_type"), **kw)
    rolled, unrolled = load_decoder(tmp_path), load_decoder(tmp_path, unroll=True)
    assert unrolled.model.unroll and not rolled.model.unroll
    ids, mask = _padded_batch(rolled.config.vocab_size)
    np.testing.assert_allclose(np.asarray(unrolled.logits(ids, mask))[mask], np.asarray(rolled.logits(ids, mask))[mask],
                               rtol=1e-5, atol=1e-5)
    outs = []
    for dec in (rolled, unrolled):                    # prefill 6 then 3 cached steps
        cache = dec.init_cache(4, 9)
        x = dec.embed(ids[:, :9])
        h, cache = dec.forward(x[:, :6], np.broadcast_to(np.arange(6), (4, 6)), mask[:, :6], cache)
        hs = [np.asarray(h)]
        for t in range(6, 9):
            h, cache = dec.forward(x[:, t:t + 1], np.full((4, 1), t), np.ones((4, 1), bool), cache)
            hs.append(np.asarray(h))
        outs.append(np.concatenate(hs, 1))
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
