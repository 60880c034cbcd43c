"""Dense text encoders in Flax NNX: the BERT family, MPNet and JinaBERT v2.

All three are post-LN transformer encoders that differ in four places, so one module
covers them, switched by `EncoderConfig` fields read from the HF config.json:

  arch   positions                          token types  feed-forward
  bert   learned absolute (0..T-1)          yes          dense -> act -> dense
  mpnet  learned absolute (from padding_idx+1) plus a    no           dense -> act -> dense
         relative-position bucket bias per head (T5-style, bidirectional, shared by layers)
  jina   ALiBi: bias -slope_h * |i - j|,    yes          GLU: act(x W_gate[:I]) * (x W_gate[I:]) -> wo
         no position table (extrapolates past the trained length)

Layers are stacked along a leading axis and run with `jax.lax.scan` (one compiled layer body
per length bucket). Loading (HF key names, tokenizer, pooling config) lives in `perank_jax.weights.encoder`;
tokenising, bucketing and pooling in `perank_jax.models.dense`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.core.config import check_number
from perank_jax.core.constants import MASKED

MPNET_PADDING_IDX = 1   # hard-coded in HF MPNetEmbeddings


class EncoderError(ValueError):
    """Unsupported encoder directory, config or input."""


_ACTS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


# THE limits of an encoder config.json (HF name: (type, lo, hi, default; None = required)), checked
# before any shape is built (floats: lo excluded); generous, about 10x the largest public encoders.
FIELD_LIMITS = {
    "vocab_size": (int, 1, 1 << 24, None), "hidden_size": (int, 1, 1 << 16, None),
    "num_hidden_layers": (int, 1, 256, None), "num_attention_heads": (int, 1, 1024, None),
    "intermediate_size": (int, 1, 1 << 20, None), "max_position_embeddings": (int, 1, 1 << 24, 512),
    "layer_norm_eps": (float, 0.0, 1.0, 1e-12), "type_vocab_size": (int, 0, 1 << 16, 2),
    "pad_token_id": (int, 0, 1 << 24, 0), "relative_attention_num_buckets": (int, 1, 1 << 16, 32),
}


@dataclass(frozen=True)
class EncoderConfig:
    arch: str                      # "bert" | "mpnet" | "jina"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    pad_token_id: int = 0
    num_buckets: int = 32          # mpnet relative attention buckets
    name: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_tokens(self) -> int | None:
        """Longest input the position scheme supports (None: unbounded, ALiBi)."""
        if self.arch == "jina":
            return None
        if self.arch == "mpnet":
            return self.max_position_embeddings - MPNET_PADDING_IDX - 1
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, c: dict, source: str = "config.json") -> "EncoderConfig":
        mt = c.get("model_type")
        archs = c.get("architectures") or []
        if mt == "mpnet":
            arch = "mpnet"
        elif mt == "bert":
            jina = (c.get("position_embedding_type") == "alibi"
                    or any("JinaBert" in a for a in archs)
                    or str(c.get("feed_forward_type", "original")).endswith("glu"))
            arch = "jina" if jina else "bert"
        else:
            raise EncoderError(f"{source}: unknown encoder architecture model_type={mt!r} "
                               f"(architectures={archs}); supported: bert (BERT/BGE/MiniLM/e5), "
                               "mpnet, bert with JinaBERT-v2 fields (ALiBi + GLU)")
        pet = c.get("position_embedding_type", "absolute")
        if arch == "bert" and pet != "absolute":
            raise EncoderError(f"{source}: position_embedding_type={pet!r} is not supported for BERT "
                               "(only 'absolute'; 'alibi' selects JinaBERT)")
        if arch == "jina":
            if pet != "alibi":
                raise EncoderError(f"{source}: JinaBERT needs position_embedding_type='alibi', got {pet!r}")
            fft = c.get("feed_forward_type", "geglu")
            if fft not in ("geglu", "reglu"):
                raise EncoderError(f"{source}: JinaBERT feed_forward_type={fft!r} unsupported "
                                   "(geglu or reglu)")
            act = "gelu" if fft == "geglu" else "relu"
        else:
            act = c.get("hidden_act", "gelu")
        if act not in _ACTS:
            raise EncoderError(f"{source}: hidden_act={act!r} unsupported ({sorted(_ACTS)})")
        v = {}
        for key, (kind, lo, hi, default) in FIELD_LIMITS.items():
            if c.get(key) is None and default is None:
                raise EncoderError(f"{source}: missing field {key!r}")
            v[key] = check_number(key, default if c.get(key) is None else c[key], kind, lo, hi,
                                  lambda m: EncoderError(f"{source}: {m}"))
        cfg = cls(arch=arch, vocab_size=v["vocab_size"], hidden_size=v["hidden_size"],
                  num_layers=v["num_hidden_layers"], num_heads=v["num_attention_heads"],
                  intermediate_size=v["intermediate_size"], max_position_embeddings=v["max_position_embeddings"],
                  hidden_act=act, layer_norm_eps=v["layer_norm_eps"],
                  type_vocab_size=0 if arch == "mpnet" else v["type_vocab_size"], pad_token_id=v["pad_token_id"],
                  num_buckets=v["relative_attention_num_buckets"], name=str(c.get("_name_or_path", "")))
        if cfg.hidden_size % cfg.num_heads:
            raise EncoderError(f"{source}: hidden_size {cfg.hidden_size} is not a multiple of "
                               f"num_attention_heads {cfg.num_heads}")
        return cfg


# ------------------------------------------------------------------ position biases
def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al. 2022): for n a power of two, 2^(-8k/n), k = 1..n;
    otherwise those of the closest lower power of two m, then every other slope of 2m."""
    def pow2(n):
        return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]
    if math.log2(n_heads).is_integer():
        return np.asarray(pow2(n_heads), np.float32)
    m = 2 ** math.floor(math.log2(n_heads))
    return np.asarray(pow2(m) + pow2(2 * m)[0::2][: n_heads - m], np.float32)


def alibi_bias(n_heads: int, length: int) -> np.ndarray:
    """[H, T, T] symmetric ALiBi bias -slope_h * |i - j| (as JinaBERT adds it to the scores)."""
    pos = np.arange(length)
    dist = np.abs(pos[None, :] - pos[:, None]).astype(np.float32)
    return -alibi_slopes(n_heads)[:, None, None] * dist[None]


def mpnet_buckets(length: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """[T, T] relative-position bucket ids, as HF MPNetEncoder.relative_position_bucket
    (computed in float32 like torch so bucket edges agree)."""
    pos = np.arange(length)
    n = -(pos[None, :] - pos[:, None])          # -(memory - context)
    half = num_buckets // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        large = np.log(n.astype(np.float32) / np.float32(max_exact))
    large = large / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = max_exact + np.nan_to_num(large, neginf=0).astype(np.int64)
    large = np.minimum(large, half - 1)
    return ret + np.where(n < max_exact, n, large)


# ------------------------------------------------------------------ the module
def _layer_norm(x, scale, bias, eps):
    x32 = x.astype(jnp.float32)
    mu = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mu).mean(-1, keepdims=True)
    y = (x32 - mu) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def layer_param_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Per-layer parameter shapes (stacked with a leading num_layers axis). Kernels are [in, out]."""
    D, I = cfg.hidden_size, cfg.intermediate_size
    shapes = {"q_w": (D, D), "q_b": (D,), "k_w": (D, D), "k_b": (D,), "v_w": (D, D), "v_b": (D,),
              "o_w": (D, D), "o_b": (D,), "ln1_scale": (D,), "ln1_bias": (D,)}
    if cfg.arch == "jina":
        shapes["gate_w"] = (D, 2 * I)
    else:
        shapes.update(up_w=(D, I), up_b=(I,))
    shapes.update(down_w=(I, D), down_b=(D,), ln2_scale=(D,), ln2_bias=(D,))
    return shapes


def embed_param_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    D = cfg.hidden_size
    shapes = {"word": (cfg.vocab_size, D), "ln_scale": (D,), "ln_bias": (D,)}
    if cfg.arch != "jina":
        shapes["pos"] = (cfg.max_position_embeddings, D)
    if cfg.type_vocab_size:
        shapes["type"] = (cfg.type_vocab_size, D)
    if cfg.arch == "mpnet":
        shapes["rel_bias"] = (cfg.num_buckets, cfg.num_heads)
    return shapes


def _init(key, shape, name, dtype):
    if name.endswith("scale"):
        return jnp.ones(shape, dtype)
    if name.endswith("_b") or name.endswith("ln_bias") or name in ("ln1_bias", "ln2_bias"):
        return jnp.zeros(shape, dtype)
    return (0.02 * jax.random.normal(key, shape)).astype(dtype)


class _Params(nnx.Module):
    def __init__(self, shapes: dict, rngs: nnx.Rngs, dtype, lead: tuple = ()):
        self.names = tuple(shapes)
        for n, s in shapes.items():
            setattr(self, n, nnx.Param(_init(rngs.params(), lead + s, n, dtype)))

    def arrays(self) -> dict:
        return {n: getattr(self, n)[...] for n in self.names}


class Encoder(nnx.Module):
    """encoder(ids [B,T] int32, mask [B,T] bool (True = real token)) -> last hidden states [B,T,D].

    Padding must be on the right (as the tokenizer in `dense` produces it)."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.cfg = cfg
        self.dtype = dtype
        self.emb = _Params(embed_param_shapes(cfg), rngs, param_dtype)
        self.layers = _Params(layer_param_shapes(cfg), rngs, param_dtype, lead=(cfg.num_layers,))

    def _embed(self, ids, mask, e):
        cfg = self.cfg
        x = jnp.take(e["word"], ids, axis=0)
        if cfg.type_vocab_size:
            x = x + e["type"][0]                      # single-segment inputs: token type 0
        if cfg.arch == "bert":
            x = x + e["pos"][: ids.shape[1]][None]
        elif cfg.arch == "mpnet":                     # HF create_position_ids_from_input_ids
            real = (ids != MPNET_PADDING_IDX).astype(jnp.int32)
            x = x + jnp.take(e["pos"], jnp.cumsum(real, axis=1) * real + MPNET_PADDING_IDX, axis=0)
        return _layer_norm(x, e["ln_scale"], e["ln_bias"], cfg.layer_norm_eps).astype(self.dtype)

    def _bias(self, T, e):
        cfg = self.cfg
        if cfg.arch == "jina":
            return jnp.asarray(alibi_bias(cfg.num_heads, T))
        if cfg.arch == "mpnet":
            b = jnp.take(e["rel_bias"], jnp.asarray(mpnet_buckets(T, cfg.num_buckets)), axis=0)
            return jnp.transpose(b, (2, 0, 1)).astype(jnp.float32)   # [H, T, T]
        return None

    def __call__(self, ids, mask):
        cfg = self.cfg
        B, T = ids.shape
        H, hd, eps = cfg.num_heads, cfg.head_dim, cfg.layer_norm_eps
        act = _ACTS[cfg.hidden_act]
        e = self.emb.arrays()
        x = self._embed(ids, mask, e)
        bias = self._bias(T, e)
        # additive key mask [B,1,1,T] (0 real, MASKED padding), plus the position bias
        add = jnp.where(mask, 0.0, MASKED).astype(jnp.float32)[:, None, None, :]
        dt = self.dtype

        def heads(y):                                  # [B,T,D] -> [B,H,T,hd]
            return y.reshape(B, T, H, hd).transpose(0, 2, 1, 3)

        def layer(x, p):
            p = {k: v.astype(dt) for k, v in p.items()}
            q, k, v = (heads(x @ p[f"{n}_w"] + p[f"{n}_b"]) for n in "qkv")
            s = jnp.matmul(q, jnp.swapaxes(k, -1, -2)).astype(jnp.float32) * (1.0 / math.sqrt(hd)) + add
            if bias is not None:
                s = s + bias[None]
            a = jax.nn.softmax(s, axis=-1).astype(dt)
            ctx = jnp.matmul(a, v).transpose(0, 2, 1, 3).reshape(B, T, H * hd)
            x = _layer_norm(ctx @ p["o_w"] + p["o_b"] + x, p["ln1_scale"], p["ln1_bias"], eps)
            if cfg.arch == "jina":
                g = x @ p["gate_w"]
                h = act(g[..., : cfg.intermediate_size]) * g[..., cfg.intermediate_size:]
            else:
                h = act(x @ p["up_w"] + p["up_b"])
            x = _layer_norm(h @ p["down_w"] + p["down_b"] + x, p["ln2_scale"], p["ln2_bias"], eps)
            return x, None

        x, _ = jax.lax.scan(layer, x, self.layers.arrays())
        return x
