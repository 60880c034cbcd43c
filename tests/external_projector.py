"""Projectors defined OUTSIDE the package, as a researcher would write them; the tests select them by
import path ("external_projector:GatedLinear"). GatedLinear declares its own typed option and saves
its weights generically (model.projector.w / .gate); the others are deliberately broken."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from perank_jax.config import setting
from perank_jax.models.projector import Projector


@dataclass(frozen=True)
class GatedOptions:
    gain: float = setting(float, 1.0, 0.0, 100.0)       # the gate's start value, > 0


class GatedLinear(Projector):
    """tanh(x W) times a learned per-dimension gate: one vector per passage."""
    Options = GatedOptions

    def __init__(self, in_dim, out_dim, options=None, *, rngs=None, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(in_dim, out_dim, options, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        rngs = rngs or nnx.Rngs(0)
        w = jax.random.normal(rngs.params(), (in_dim, out_dim), param_dtype) / jnp.sqrt(in_dim)
        self.w = nnx.Param(w, axes=("proj_in", "embed"))
        self.gate = nnx.Param(jnp.full((out_dim,), self.options.gain, param_dtype), axes=("embed",))

    def __call__(self, passages, query=None):
        x = passages.astype(self.dtype) @ self.w[...].astype(self.dtype)
        return (jnp.tanh(x) * self.gate[...].astype(self.dtype))[:, None, :]


class FlatOutput(GatedLinear):
    """Broken: returns [N, H] instead of [N, k, H]."""

    def __call__(self, passages, query=None):
        return super().__call__(passages)[:, 0, :]


class NotAProjector:
    """Broken: not a Projector subclass."""
