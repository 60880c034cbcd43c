"""A projector written outside the package: a linear map whose output is gated per dimension by the passage itself (docs/extending.md)."""
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from perank_jax.core import setting
from perank_jax.models import Projector


@dataclass(frozen=True)
class GatedOptions:
    gate_bias: float = setting(float, 2.0, -10.0, 10.0)   # the gates start near sigmoid(2) = 0.88: open


class GatedProjector(Projector):
    """(W p + b) * sigmoid(G p + gate_bias): one vector per passage (tokens_per_passage = 1)."""
    Options = GatedOptions

    def __init__(self, in_dim, out_dim, options=None, *, rngs=None, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(in_dim, out_dim, options, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        rngs = rngs or nnx.Rngs(0)
        w = jax.random.normal(rngs.params(), (in_dim, out_dim), param_dtype) / jnp.sqrt(in_dim)
        self.w = nnx.Param(w, axes=("proj_in", "embed"))          # logical axes: core.sharding.RULES places them
        self.b = nnx.Param(jnp.zeros((out_dim,), param_dtype), axes=("embed",))
        self.g = nnx.Param(jnp.zeros((in_dim, out_dim), param_dtype), axes=("proj_in", "embed"))

    def __call__(self, passages, query=None):
        p = passages.astype(self.dtype)
        gate = jax.nn.sigmoid(p @ self.g[...].astype(self.dtype) + self.options.gate_bias)
        return ((p @ self.w[...].astype(self.dtype) + self.b[...].astype(self.dtype)) * gate)[:, None, :]
