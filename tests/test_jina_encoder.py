"""JinaBERT-v2 (jina-embeddings-v2 architecture): ALiBi slopes, loading under jina's key names,
agreement with a numpy transcription of jina's modeling_bert.py, extrapolation past the
trained length, and padding invariance."""
import math

import numpy as np
import pytest
from scipy.special import erf

import perank_jax
from perank_jax.models.encoder import EncoderConfig, alibi_bias, alibi_slopes
from perank_jax.weights.io import WeightError
from fixtures import tiny_jina


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_alibi_slopes_power_of_two_heads_are_geometric(n):
    # ALiBi paper: for n heads the slopes are 2^(-8/n), 2^(-16/n), ..., 2^(-8)
    assert np.allclose(alibi_slopes(n), [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)], rtol=1e-7, atol=0)


def test_alibi_slopes_non_power_of_two_heads_interleave_the_next_power():
    # 12 heads (jina-embeddings-v2-base): the 8 slopes of 8 heads, then the odd-indexed
    # slopes of 16 heads 2^(-0.5), 2^(-1.5), 2^(-2.5), 2^(-3.5)
    want12 = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -(k - 0.5) for k in range(1, 5)]
    assert np.allclose(alibi_slopes(12), want12, rtol=1e-7)
    want6 = [4.0 ** -k for k in range(1, 5)] + [2.0 ** -1, 2.0 ** -3]
    assert np.allclose(alibi_slopes(6), want6, rtol=1e-7)
    assert len(alibi_slopes(24)) == 24 and np.all(np.diff(alibi_slopes(16)) < 0)


def test_alibi_bias_is_minus_slope_times_distance():
    b = alibi_bias(12, 7)
    s = alibi_slopes(12)
    for h in (0, 5, 11):
        for i in range(7):
            for j in range(7):
                assert b[h, i, j] == pytest.approx(-s[h] * abs(i - j), rel=1e-6)


# ------------------------------------------------------------------ numpy transcription
def _ln(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def jina_reference(sd, cfg, ids, mask):
    """Transcription of JinaBertModel.forward (eager path) in float64 numpy."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    H, D, I = cfg["num_attention_heads"], cfg["hidden_size"], cfg["intermediate_size"]
    hd = D // H
    B, T = ids.shape
    x = sd["embeddings.word_embeddings.weight"][ids] + sd["embeddings.token_type_embeddings.weight"][0]
    x = _ln(x, sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"])
    ext = (1.0 - mask[:, None, None, :]) * np.finfo(np.float64).min      # HF extended mask
    bias = alibi_bias(H, T).astype(np.float64)[None]
    lin = lambda x, p, b=True: x @ sd[p + ".weight"].T + (sd[p + ".bias"] if b else 0)  # noqa: E731
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}").reshape(B, T, H, hd).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + ext + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        a = s / s.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
        x = _ln(lin(ctx, p + "attention.output.dense") + x, sd[p + "attention.output.LayerNorm.weight"],
                sd[p + "attention.output.LayerNorm.bias"])
        g = lin(x, p + "mlp.gated_layers", b=False)
        gated, non_gated = g[..., :I], g[..., I:]
        h = 0.5 * gated * (1 + erf(gated / math.sqrt(2))) * non_gated
        x = _ln(lin(h, p + "mlp.wo") + x, sd[p + "mlp.layernorm.weight"], sd[p + "mlp.layernorm.bias"])
    return x


@pytest.fixture(scope="module")
def jina(tmp_path_factory, minilm_dir):
    d = tmp_path_factory.mktemp("jina")
    cfg, sd = tiny_jina(d, minilm_dir)
    return d, cfg, sd


def test_jina_state_dict_loads_with_no_missing_or_unexpected_keys(jina):
    d, cfg, _ = jina
    enc = perank_jax.load_encoder(d, max_length=64)
    assert enc.config.arch == "jina" and enc.dim == cfg["hidden_size"]
    assert enc.pooling == "mean"                        # from the config's emb_pooler
    assert not hasattr(enc.model.emb, "pos")            # ALiBi: no position table
    for archs in (["JinaBertModel"], ["JinaBertForMaskedLM"]):
        assert EncoderConfig.from_hf({**cfg, "architectures": archs}).arch == "jina"
    assert EncoderConfig.from_hf({**cfg, "position_embedding_type": "absolute", "architectures": ["BertModel"],
                                  "feed_forward_type": "original"}).arch == "bert"


def test_jina_extra_or_missing_key_is_one_clear_error(tmp_path, minilm_dir):
    extra = {"encoder.layer.0.attention.self.layer_norm_q.weight": np.ones(32, np.float32)}
    tiny_jina(tmp_path / "a", minilm_dir, extra=extra, drop=("encoder.layer.1.mlp.wo.bias",))
    with pytest.raises(WeightError) as e:
        perank_jax.load_encoder(tmp_path / "a")
    msg = str(e.value)
    assert "layer_norm_q" in msg and "encoder.layer.1.mlp.wo.bias" in msg and "missing" in msg


@pytest.mark.parametrize("num_heads", [4, 6])
def test_jina_hidden_states_match_numpy_transcription(tmp_path, minilm_dir, num_heads):
    cfg, sd = tiny_jina(tmp_path, minilm_dir, num_heads=num_heads, seed=num_heads)
    enc = perank_jax.load_encoder(tmp_path, max_length=128)
    rng = np.random.default_rng(0)
    T = 80                                              # > max_position_embeddings (32)
    ids = rng.integers(1000, 30000, (3, T))
    mask = np.zeros((3, T), np.int64)
    for b, n in enumerate((T, 45, 9)):
        mask[b, :n] = 1
    ids = np.where(mask == 1, ids, 0)
    ref = jina_reference(sd, cfg, ids, mask)
    got = enc.hidden_states(ids, mask)
    real = mask.astype(bool)
    err = np.abs(got - ref)[real].max() / np.abs(ref[real]).max()
    assert err <= 1e-5, err


def test_jina_encodes_beyond_trained_length(jina):
    d, cfg, sd = jina
    enc = perank_jax.load_encoder(d, max_length=256)   # trained length: 32 positions
    long_text = "retrieval with linear attention biases extrapolates " * 30
    n_tok = len(enc.tokenize([long_text])[0])
    assert n_tok > 4 * cfg["max_position_embeddings"]
    e = enc.encode([long_text, "short one"], batch_size=2)
    assert np.isfinite(e).all() and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    ids = np.asarray(enc.tokenize([long_text]))
    ref = jina_reference(sd, cfg, ids, np.ones_like(ids)).mean(1)[0]
    assert np.dot(e[0], ref) / np.linalg.norm(ref) > 0.99999


def test_jina_text_embedding_is_the_same_alone_and_in_a_padded_batch(jina):
    d, _, _ = jina
    enc = perank_jax.load_encoder(d, max_length=128)
    text = "a short passage about alibi"
    alone = enc.encode([text], batch_size=4)[0]         # batch padded with 3 empty rows
    batch = enc.encode(["x " * 90, text, "another much longer passage " * 10], batch_size=4)
    assert np.abs(batch[1] - alone).max() < 1e-6
