"""Sentence pooling over last hidden states (mean / cls / last) and L2 normalisation."""
from __future__ import annotations

import jax.numpy as jnp

POOLINGS = ("mean", "cls", "last")


def pool(h, mask, mode: str):
    """h [B,T,D], mask [B,T] bool (right-padded) -> [B,D] float32.

    mean: average of the real tokens (sentence-transformers: sum / clamp(count, 1e-9));
    cls: the first token; last: the last real token."""
    h = h.astype(jnp.float32)
    if mode == "mean":
        m = mask.astype(jnp.float32)[..., None]
        return (h * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    if mode == "cls":
        return h[:, 0]
    if mode == "last":
        last = jnp.maximum(mask.astype(jnp.int32).sum(1) - 1, 0)
        return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    raise ValueError(f"unknown pooling {mode!r}; choose one of {POOLINGS}")


def l2_normalize(x, eps: float = 1e-12):
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
