"""LoRA for the decoder's stacked projection weights (stage-2 option).

A target weight W (stacked over layers, e.g. q [L, D, H, hd]) is viewed as a matrix
[L, in, out]; the adapted weight is W + (alpha / r) * A @ B with A [L, in, r] (random,
scaled like torch's kaiming-uniform) and B [L, r, out] (zeros), so training starts at W.
`merge` folds the adapters into plain decoder parameters (used inside the step and at export).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# parameter -> number of leading (after "layers") dims that form the input side
IN_DIMS = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
DEFAULT_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def _split(shape, name):
    k = IN_DIMS[name]
    return math.prod(shape[1:1 + k]), math.prod(shape[1 + k:])


def factor_shapes(weight_shape, name: str, rank: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The shapes of target `name`'s factors A [L, in, r] and B [L, r, out] for a stacked weight."""
    d_in, d_out = _split(weight_shape, name)
    return (weight_shape[0], d_in, rank), (weight_shape[0], rank, d_out)


def init(decoder_params: dict, targets, rank: int, key) -> dict:
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    unknown = sorted(set(targets) - set(IN_DIMS))
    if unknown:
        raise ValueError(f"LoRA targets {unknown} are not decoder projections; choose from {sorted(IN_DIMS)}")
    out = {}
    for i, name in enumerate(sorted(targets)):
        w = decoder_params[name]
        L, (d_in, d_out) = w.shape[0], _split(w.shape, name)
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(jax.random.fold_in(key, i), (L, d_in, rank), jnp.float32, -bound, bound)
        out[name] = {"a": a.astype(w.dtype), "b": jnp.zeros((L, rank, d_out), w.dtype)}
    return out


def merge(decoder_params: dict, lora: dict, alpha: float, rank: int) -> dict:
    """Decoder parameters with every adapter folded in (W + alpha/r * A @ B)."""
    scale = alpha / rank
    merged = dict(decoder_params)
    for name, ab in lora.items():
        w = decoder_params[name]
        delta = jnp.einsum("lir,lro->lio", ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32))
        merged[name] = (w.astype(jnp.float32) + scale * delta.reshape(w.shape)).astype(w.dtype)
    return merged


def axes(lora: dict) -> dict:
    """Logical axes of the adapters (small: replicated except the layer axis)."""
    return {name: {"a": ("layers", None, None), "b": ("layers", None, None)} for name in lora}
