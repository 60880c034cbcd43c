"""Attention of the decoder (perank_jax.models.decoder): GQA, causal *by position*.

A query attends to every valid key whose position is <= its own (and, with a sliding window
W, > its own - W); empty or padding slots carry position -1. Two entry points:

    attention(q, k, v, q_pos, k_pos, window)        any keys: a KV cache, a decoding step
    self_attention(q, k, v, q_pos, k_pos, window)   a prompt over itself (slot t = position t):
                                                    causal query blocks skip the future; on a
                                                    GPU in bf16/fp16, cuDNN flash attention

Both are float32-exact replacements for the textbook softmax(q k^T / sqrt(d)) v with a
position mask (tests/test_generate_long_prompts.py, tests/test_decoder_matches_hf.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from perank_jax.core.constants import MASKED


def _allowed(q_pos, k_pos, window):
    """[B, T, S] bool: key slot s is visible to query t (valid, not in the future, inside the window)."""
    ok = (k_pos[:, None, :] >= 0) & (k_pos[:, None, :] <= q_pos[:, :, None])
    if window is not None:
        ok &= q_pos[:, :, None] - k_pos[:, None, :] < window
    return ok


def attention(q, k, v, q_pos, k_pos, window):
    """GQA attention, causal by position. q [B,T,H,hd]; k, v [B,S,K,hd]; q_pos [B,T]; k_pos [B,S] (-1 = empty).

    The G = H/K query heads sharing a KV head are stacked with the queries ([B, K, T*G, hd]), so
    each KV head is one plain matrix product (XLA's CPU dot is several times faster on that
    layout than on the grouped 5-d einsum)."""
    B, T, H, hd = q.shape
    K = k.shape[2]
    G = H // K
    if T == 1 and K > 1 and jax.default_backend() == "cpu":
        return _one_query_attention(q, k, v, q_pos, k_pos, window)
    qm = q.reshape(B, T, K, G, hd).transpose(0, 2, 1, 3, 4).reshape(B, K, T * G, hd)
    s = jnp.einsum("bkmd,bskd->bkms", qm, k, preferred_element_type=jnp.float32) / np.sqrt(hd)
    s = s.reshape(B, K, T, G, -1)
    s = jnp.where(_allowed(q_pos, k_pos, window)[:, None, :, None], s, MASKED)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype).reshape(B, K, T * G, -1)
    out = jnp.einsum("bkms,bskd->bkmd", p, v, preferred_element_type=jnp.float32)
    return out.reshape(B, K, T, G, hd).transpose(0, 2, 1, 3, 4).reshape(B, T, H, hd).astype(v.dtype)


def _one_query_attention(q, k, v, q_pos, k_pos, window):
    """`attention` for one query per row (a decoding step) on CPU. The per-head form makes XLA
    copy each layer's cache slice transposed before its dot; here the cache slice is used in
    its own layout, as one [S, K*hd] matrix against a block-diagonal query matrix [K*hd, K*G]
    (zeros off the diagonal blocks, then the diagonal blocks of the output kept): K times the
    (tiny) FLOPs, one fewer pass over the cache. SmolLM2 step at 2,432 slots: 52 -> 43 ms."""
    B, T, H, hd = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    eye = jnp.eye(K, dtype=q.dtype)
    qbd = q.reshape(B, K, G, 1, hd) * eye[:, None, :, None]                  # [B, K, G, K', hd]
    qbd = qbd.transpose(0, 3, 4, 1, 2).reshape(B, K * hd, K * G)
    s = jnp.einsum("bsc,bcm->bsm", k.reshape(B, S, K * hd), qbd, preferred_element_type=jnp.float32)
    s = (s / np.sqrt(hd)).reshape(B, S, K * G)
    s = jnp.where(_allowed(q_pos, k_pos, window)[:, 0, :, None], s, MASKED)
    p = jax.nn.softmax(s, axis=1).astype(v.dtype)
    o = jnp.einsum("bsm,bsc->bmc", p, v.reshape(B, S, K * hd), preferred_element_type=jnp.float32)
    o = jnp.einsum("bkgjd,kj->bkgd", o.reshape(B, K, G, K, hd), eye.astype(o.dtype))
    return o.reshape(B, 1, H, hd).astype(v.dtype)


def causal_block(T: int) -> int:
    """Query block of `self_attention` for a T-token prompt: at most ~16 blocks, at least 128 rows."""
    return max(128, -(-T // 1024) * 64)


def self_attention(q, k, v, q_pos, k_pos, window, block: int | None = None, flash: bool = False):
    """`attention` of T new tokens over themselves when slot t holds position t (a right-padded
    prompt from position 0, padding at -1): queries run in blocks, and each block reads only
    the keys that can be visible to it (none in its future, none before its sliding window),
    which skips about half of the causal score matrix. Same values as `attention`.
    `flash=True` runs `flash_self_attention` instead (see `use_flash`)."""
    B, T = q_pos.shape
    if flash:
        return flash_self_attention(q, k, v, k_pos, window)
    block = block or causal_block(T)
    if T <= block:
        return attention(q, k, v, q_pos, k_pos, window)
    outs = []
    for a in range(0, T, block):
        e = min(T, a + block)
        s = 0 if window is None else max(0, a - window + 1)
        outs.append(attention(q[:, a:e], k[:, s:e], v[:, s:e], q_pos[:, a:e], k_pos[:, s:e], window))
    return jnp.concatenate(outs, axis=1)


def use_flash(dtype, mesh=None) -> bool:
    """cuDNN flash attention for a prompt's self-attention: on a GPU, in bf16 / fp16 (cuDNN has
    no float32 kernel, and float32 keeps the blocked XLA path, exact to HF), unsharded."""
    return (mesh is None and jax.default_backend() == "gpu"
            and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)))


def flash_self_attention(q, k, v, k_pos, window, implementation: str = "cudnn"):
    """`self_attention` through jax.nn.dot_product_attention: right-padded rows are causal with
    key lengths (valid slots = k_pos >= 0), the window is the left window W - 1.
    `implementation="xla"` runs the same call anywhere (tests)."""
    lengths = (k_pos >= 0).sum(axis=1).astype(jnp.int32)
    return jax.nn.dot_product_attention(
        q, k, v, is_causal=True, key_value_seq_lengths=lengths,
        local_window_size=None if window is None else (window - 1, 0), implementation=implementation)
