"""Projectors defined OUTSIDE the package, as a researcher would write them; the tests select them by
import path ("external_projector:GatedLinear"). GatedLinear declares its own typed option and saves
its weights generically (model.projector.w / .gate); TwoTokenProjector gives k = 2 vectors per passage;
QueryRecordingProjector uses the query's vector and records every one it is given (in training steps
and at inference); FlatOutput and NotAProjector are deliberately broken."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.core.config import setting
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


def _param(rng, d_in, d_out):
    return nnx.Param(jnp.asarray(rng.normal(size=(d_in, d_out)) / np.sqrt(d_in), jnp.float32),
                     axes=("proj_in", "embed"))


class TwoTokenProjector(Projector):
    """k = 2: one linear map to 2 * H, split into the passage's two input vectors."""
    tokens_per_passage = 2

    def __init__(self, in_dim, out_dim, options=None, *, rngs=None, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(in_dim, out_dim, options, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.w = _param(np.random.default_rng(0), in_dim, 2 * out_dim)

    def __call__(self, passages, query=None):
        return (passages @ self.w[...]).reshape(passages.shape[0], 2, self.out_dim)


QUERIES_SEEN: list = []       # every query array QueryRecordingProjector was called with


class QueryRecordingProjector(Projector):
    """k = 1, conditioned on the query: W p + V q; each call's query [N, E] is appended to QUERIES_SEEN
    (a host callback, so it records inside jit too)."""
    uses_query = True

    def __init__(self, in_dim, out_dim, options=None, *, rngs=None, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(in_dim, out_dim, options, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        rng = np.random.default_rng(0)
        self.w, self.v = _param(rng, in_dim, out_dim), _param(rng, in_dim, out_dim)

    def __call__(self, passages, query=None):
        jax.debug.callback(lambda q: QUERIES_SEEN.append(np.array(q)), query)
        return (passages @ self.w[...] + query @ self.v[...])[:, None, :]
