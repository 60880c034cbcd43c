"""Mistral / Llama decoder in Flax NNX.

One readable file: the config, the parameters (stacked over layers, each with its
logical sharding axes), and three pure entry points that PE-Rank needs:

    embed(ids)                                   -> input embeddings [B, T, D]
    forward(x, positions, mask, cache=None, *, prefill=False)
                                                 -> final-RMSNormed hidden [B, T, D], cache
    head(h)                                      -> logits [B, T, V] (float32)

Layers run under `lax.scan` (optionally rematerialised, optionally unrolled). Attention is causal *by
position*: a token attends to every valid key whose position is <= its own (and,
with a sliding window W, > its own - W). That single rule covers right-padded
batches, prefill and token-by-token decoding with a preallocated KV cache whose
empty slots carry position -1. The attention itself is in perank_jax.models.attention
(`prefill=True`: a prompt over itself in causal blocks, never the empty cache tail).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from perank_jax.models.attention import attention, self_attention, use_flash
from perank_jax.core.config import check_number, is_int
from perank_jax.core.sharding import constrain


class DecoderConfigError(ValueError):
    pass


# THE limits of a decoder config (field: (HF name, type, lo, hi; floats: lo excluded)), checked before any
# shape is built; generous (about 10x the largest public Llama / Mistral models).
FIELD_LIMITS = {
    "vocab_size": ("vocab_size", int, 1, 1 << 24),
    "hidden_size": ("hidden_size", int, 1, 1 << 17),
    "intermediate_size": ("intermediate_size", int, 1, 1 << 20),
    "num_layers": ("num_hidden_layers", int, 1, 1024),
    "num_heads": ("num_attention_heads", int, 1, 1024),
    "num_kv_heads": ("num_key_value_heads", int, 1, 1024),
    "head_dim": ("head_dim", int, 2, 1024),
    "rope_theta": ("rope_theta", float, 0.0, 1e12),
    "rms_norm_eps": ("rms_norm_eps", float, 0.0, 1.0),
    "sliding_window": ("sliding_window", int, 1, 1 << 24),
    "max_position_embeddings": ("max_position_embeddings", int, 1, 1 << 24),
}
DERIVED = ("num_kv_heads", "head_dim")      # None: num_heads / hidden_size // num_heads
OPTIONAL = ("sliding_window",)              # None: no sliding window


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    model_type: str = "mistral"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self):
        for name, (hf_name, kind, lo, hi) in FIELD_LIMITS.items():
            value = getattr(self, name)
            if value is None and name in DERIVED:
                continue
            if value is None and name not in OPTIONAL:
                raise DecoderConfigError(f"{hf_name} is required")
            if value is not None:
                object.__setattr__(self, name, check_number(hf_name, value, kind, lo, hi, DecoderConfigError))
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            hd = self.hidden_size // self.num_heads
            object.__setattr__(self, "head_dim", check_number("head_dim (hidden_size // num_attention_heads)",
                                                              hd, int, *FIELD_LIMITS["head_dim"][2:],
                                                              DecoderConfigError))
        if self.num_heads % self.num_kv_heads:
            raise DecoderConfigError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise DecoderConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> "DecoderConfig":
        """From an HF config.json dict (model_type mistral or llama; embed_mistral is a mistral)."""
        mt = hf.get("model_type")
        if mt not in ("mistral", "llama", "embed_mistral"):
            raise DecoderConfigError(
                f"{source}: model_type {mt!r} is not supported (supported: mistral, llama, embed_mistral)")
        # rope: old style (rope_theta + rope_scaling) or transformers>=5 rope_parameters
        rp = hf.get("rope_parameters") or {}
        scaling = hf.get("rope_scaling")
        for key, v in (("rope_parameters", rp), ("rope_scaling", scaling)):
            if v is not None and not isinstance(v, dict):
                raise DecoderConfigError(f"{source}: {key} must be a mapping, got {v!r}")
        rope_type = (rp.get("rope_type") if rp else None) or (
            (scaling.get("rope_type") or scaling.get("type")) if scaling else None) or "default"
        if rope_type != "default":
            raise DecoderConfigError(f"{source}: rope type {rope_type!r} is not implemented (only 'default')")
        theta = rp.get("rope_theta", hf.get("rope_theta", 10000.0))
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise DecoderConfigError(f"{source}: {flag}=true is not supported")
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):
            raise DecoderConfigError(f"{source}: hidden_act {hf.get('hidden_act')!r} is not supported (silu)")
        lt = hf.get("layer_types")
        if lt is not None and not (isinstance(lt, list) and all(isinstance(t, str) for t in lt)):
            raise DecoderConfigError(f"{source}: layer_types must be a list of strings")
        if hf.get("layer_types") and any(t != "full_attention" and t != "sliding_attention"
                                        for t in hf["layer_types"]):
            raise DecoderConfigError(f"{source}: layer_types {set(hf['layer_types'])} not supported")
        if hf.get("layer_types") and len(set(hf["layer_types"])) > 1:
            raise DecoderConfigError(f"{source}: mixed per-layer attention types are not supported")
        sw = hf.get("sliding_window") if mt != "llama" else None
        if mt != "llama" and hf.get("use_sliding_window") is False:
            sw = None
        tie = hf.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise DecoderConfigError(f"{source}: tie_word_embeddings must be true or false, got {tie!r}")
        for key in ("bos_token_id", "eos_token_id"):
            ids = hf.get(key)
            if not (ids is None or is_int(ids) or isinstance(ids, list) and all(is_int(i) for i in ids)):
                raise DecoderConfigError(f"{source}: {key} must be a token id or a list of them, got {ids!r}")
        try:
            return cls(
                vocab_size=hf.get("vocab_size"), hidden_size=hf.get("hidden_size"),
                intermediate_size=hf.get("intermediate_size"), num_layers=hf.get("num_hidden_layers"),
                num_heads=hf.get("num_attention_heads"), num_kv_heads=hf.get("num_key_value_heads"),
                head_dim=hf.get("head_dim"), rope_theta=theta, rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
                sliding_window=sw, tie_word_embeddings=tie,
                max_position_embeddings=hf.get("max_position_embeddings", 32768),
                model_type="mistral" if mt == "embed_mistral" else mt,
                bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"))
        except DecoderConfigError as e:
            raise DecoderConfigError(f"{source}: {e}") from None

    def to_hf(self) -> dict[str, Any]:
        arch = "MistralForCausalLM" if self.model_type == "mistral" else "LlamaForCausalLM"
        d = {"architectures": [arch], "model_type": self.model_type, "vocab_size": self.vocab_size,
             "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
             "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
             "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
             "rope_theta": self.rope_theta, "rms_norm_eps": self.rms_norm_eps,
             "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
             "max_position_embeddings": self.max_position_embeddings,
             "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id}
        if self.model_type == "mistral":
            d["sliding_window"] = self.sliding_window
        return d


# Each weight: (shape as a function of the config, logical axes). Layer weights are stacked on "layers".
def param_specs(cfg: DecoderConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    L, D, F, H, K, hd, V = (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                            cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size)
    specs = {
        "embedding": ((V, D), ("vocab", "embed")),
        "attn_norm": ((L, D), ("layers", "norm")),
        "q": ((L, D, H, hd), ("layers", "embed", "heads", "head_dim")),
        "k": ((L, D, K, hd), ("layers", "embed", "kv_heads", "head_dim")),
        "v": ((L, D, K, hd), ("layers", "embed", "kv_heads", "head_dim")),
        "o": ((L, H, hd, D), ("layers", "heads", "head_dim", "embed")),
        "mlp_norm": ((L, D), ("layers", "norm")),
        "gate": ((L, D, F), ("layers", "embed", "mlp")),
        "up": ((L, D, F), ("layers", "embed", "mlp")),
        "down": ((L, F, D), ("layers", "mlp", "embed")),
        "final_norm": ((D,), ("norm",)),
    }
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ((D, V), ("embed", "vocab"))
    return specs


LAYER_PARAMS = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")


class KVCache(NamedTuple):
    k: jax.Array      # [L, B, S, KVH, hd]
    v: jax.Array      # [L, B, S, KVH, hd]
    pos: jax.Array    # [B, S] int32 position of each slot, -1 = empty
    index: jax.Array  # int32 scalar: next slot to write


# logical axes of the KV cache's k / v: [layers, batch, cache_seq, kv_heads, head_dim]
CACHE_AXES = ("layers", "batch", "cache_seq", "act_kv_heads", "head_dim")


def init_cache(cfg: DecoderConfig, batch: int, max_len: int, dtype=jnp.float32, mesh=None) -> KVCache:
    """An empty cache (slot positions -1). On a mesh, k / v are laid out by CACHE_AXES."""
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    zeros = constrain(jnp.zeros(shape, dtype), CACHE_AXES, mesh)
    return KVCache(k=zeros, v=zeros, pos=jnp.full((batch, max_len), -1, jnp.int32), index=jnp.zeros((), jnp.int32))


def rms_norm(x, w, eps):
    """HF LlamaRMSNorm: normalise in float32, cast back, then scale."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w.astype(x.dtype) * xf.astype(x.dtype)


def rope(x, positions, theta):
    """Rotate-half RoPE (HF layout). x [B, T, N, hd], positions [B, T]."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    ang = positions.astype(jnp.float32)[..., None] * inv_freq          # [B, T, hd/2]
    cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[:, :, None, :]
    x1, x2 = jnp.split(x, 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], -1)
    return (x.astype(jnp.float32) * cos + rot.astype(jnp.float32) * sin).astype(x.dtype)


class Decoder(nnx.Module):
    """Mistral/Llama decoder. Parameters are nnx.Param with an `axes` metadata tuple."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs | None = None, dtype=jnp.float32,
                 param_dtype=jnp.float32, remat: bool = False, mesh=None, init_std: float = 0.02,
                 unroll: bool = False):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.unroll = unroll      # unroll the layer scan: static per-layer weight slices (see forward)
        self.mesh = mesh
        rngs = rngs or nnx.Rngs(0)
        for name, (shape, axes) in param_specs(cfg).items():
            if "norm" in name:
                value = jnp.ones(shape, param_dtype)
            else:
                value = (init_std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(param_dtype)
            setattr(self, name, nnx.Param(value, axes=axes))

    # --- entry points --------------------------------------------------------------------
    def embed(self, ids):
        x = jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)
        return constrain(x, ("batch", "seq", "act_embed"), self.mesh)

    def head(self, h):
        w = (self.embedding[...].T if self.cfg.tie_word_embeddings else self.lm_head[...])
        logits = jnp.einsum("btd,dv->btv", h.astype(self.dtype), w.astype(self.dtype),
                            preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "seq", "act_vocab"), self.mesh)

    def forward(self, x, positions, mask=None, cache: KVCache | None = None, *, prefill: bool = False):
        """Run the layers over x [B, T, D] at `positions` [B, T] (mask: valid tokens).

        With a cache, the new keys / values go to slots [cache.index, cache.index + T) and the
        tokens attend to every filled slot (causal by position). `prefill=True` promises that
        row b's token t sits at position t (a right-padded prompt from 0) and that the cache,
        if any, is empty: attention then reads only the new tokens, in causal query blocks
        (`self_attention`), and never the empty cache tail."""
        cfg = self.cfg
        B, T, _ = x.shape
        positions = positions.astype(jnp.int32)
        mask = jnp.ones((B, T), bool) if mask is None else mask.astype(bool)
        new_pos = jnp.where(mask, positions, -1)
        x = constrain(x.astype(self.dtype), ("batch", "seq", "act_embed"), self.mesh)
        layer_params = {n: getattr(self, n)[...] for n in LAYER_PARAMS}
        window = cfg.sliding_window

        def block(h, p, attend):
            a = rms_norm(h, p["attn_norm"], cfg.rms_norm_eps)
            w = lambda n: p[n].astype(self.dtype)
            q = rope(jnp.einsum("btd,dhk->bthk", a, w("q")), positions, cfg.rope_theta)
            k = rope(jnp.einsum("btd,dhk->bthk", a, w("k")), positions, cfg.rope_theta)
            v = jnp.einsum("btd,dhk->bthk", a, w("v"))
            q = constrain(q, ("batch", "seq", "act_heads", "head_dim"), self.mesh)
            o, kv = attend(q, k, v)
            h = h + jnp.einsum("bthk,hkd->btd", o, w("o"))
            m = rms_norm(h, p["mlp_norm"], cfg.rms_norm_eps)
            g = jax.nn.silu(jnp.einsum("btd,df->btf", m, w("gate")))
            u = jnp.einsum("btd,df->btf", m, w("up"))
            hid = constrain(g * u, ("batch", "seq", "act_mlp"), self.mesh)
            h = h + jnp.einsum("btf,fd->btd", hid, w("down"))
            return constrain(h, ("batch", "seq", "act_embed"), self.mesh), kv

        if cache is None or prefill:
            # attention over the new tokens only; their keys / values are the scan's outputs
            flash = use_flash(self.dtype, self.mesh)
            att = (lambda *a: self_attention(*a, flash=flash)) if prefill else attention
            keep = cache is not None

            def layer(h, p):
                return block(h, p, lambda q, k, v: (att(q, k, v, positions, new_pos, window),
                                                    (k, v) if keep else None))

            body = jax.checkpoint(layer) if self.remat else layer
            h, kv = jax.lax.scan(body, x, layer_params, unroll=self.unroll)
            h = rms_norm(h, self.final_norm[...], cfg.rms_norm_eps)
            if cache is None:
                return h, None
            at = (0, 0, cache.index, 0, 0)
            ck, cv = (constrain(jax.lax.dynamic_update_slice(c, n.astype(c.dtype), at), CACHE_AXES, self.mesh)
                      for c, n in ((cache.k, kv[0]), (cache.v, kv[1])))
            pos = jax.lax.dynamic_update_slice(cache.pos, new_pos, (0, cache.index))
            return h, KVCache(k=ck, v=cv, pos=pos, index=cache.index + T)

        # decoding on a filled cache: the whole cache is carried through the layer scan and
        # updated in place (never sliced out and stacked back, which copied it every step)
        k_pos = jax.lax.dynamic_update_slice(cache.pos, new_pos, (0, cache.index))

        def layer(carry, xs):
            h, ck, cv = carry
            p, i = xs

            def attend(q, k, v):
                at = (i, 0, cache.index, 0, 0)
                ck2 = constrain(jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), at), CACHE_AXES, self.mesh)
                cv2 = constrain(jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), at), CACHE_AXES, self.mesh)
                o = attention(q, ck2[i].astype(self.dtype), cv2[i].astype(self.dtype), positions, k_pos, window)
                return o, (ck2, cv2)

            h, (ck, cv) = block(h, p, attend)
            return (h, ck, cv), None

        body = jax.checkpoint(layer) if self.remat else layer
        (h, ck, cv), _ = jax.lax.scan(body, (x, cache.k, cache.v),
                                      (layer_params, jnp.arange(cfg.num_layers, dtype=jnp.int32)),
                                      unroll=self.unroll)
        h = rms_norm(h, self.final_norm[...], cfg.rms_norm_eps)
        return h, KVCache(k=ck, v=cv, pos=k_pos, index=cache.index + T)

    def __call__(self, ids, mask=None):
        B, T = ids.shape
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        h, _ = self.forward(self.embed(ids), positions, mask, prefill=True)
        return self.head(h)


# ----------------------------------------------------------------------------- runtime
def build_decoder(cfg: DecoderConfig, params: dict[str, jax.Array], dtype, mesh=None, remat=False,
                  unroll: bool = False) -> Decoder:
    """A Decoder whose parameters are `params` (no random init is materialised)."""
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=params["embedding"].dtype,
                                           remat=remat, mesh=mesh, unroll=unroll))
    for name, value in params.items():
        getattr(model, name).set_value(value)
    return model


class LoadedDecoder:
    """A loaded decoder: `.config`, `.model`, `.tokenizer` and jit-compiled entry points.
    `.tokenizer_error` says why `.tokenizer` is None when a GGUF vocabulary failed to convert."""

    def __init__(self, model: Decoder, tokenizer=None, path: str | None = None, tokenizer_error: str | None = None):
        self.model = model
        self.config = model.cfg
        self.tokenizer = tokenizer
        self.tokenizer_error = tokenizer_error
        self.path = path
        self.graphdef, self.state = nnx.split(model)
        gd = self.graphdef

        @jax.jit
        def _logits(state, ids, mask):
            return nnx.merge(gd, state)(ids, mask)

        @jax.jit
        def _embed(state, ids):
            return nnx.merge(gd, state).embed(ids)

        @jax.jit
        def _forward(state, x, positions, mask, cache):
            return nnx.merge(gd, state).forward(x, positions, mask, cache)

        @jax.jit
        def _head(state, h):
            return nnx.merge(gd, state).head(h)

        self._logits, self._embed, self._forward, self._head = _logits, _embed, _forward, _head

    def logits(self, input_ids, attention_mask=None):
        ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
        return self._logits(self.state, ids, mask)

    def embed(self, ids):
        return self._embed(self.state, jnp.asarray(ids, jnp.int32))

    def forward(self, x, positions, mask=None, cache: KVCache | None = None):
        mask = jnp.ones(x.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)
        return self._forward(self.state, x, jnp.asarray(positions, jnp.int32), mask, cache)

    def head(self, h):
        return self._head(self.state, h)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        return init_cache(self.config, batch, max_len, dtype or self.model.dtype, mesh=self.model.mesh)
