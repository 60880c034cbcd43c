"""Test-local projectors (outside the package), as a researcher would write them:
TwoTokenProjector (k = 2 vectors per passage) and QueryRecordingProjector (uses the query's
vector, and records every query vector it is given, in training steps and at inference)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.models.projector import Projector


def _param(rng, d_in, d_out):
    return nnx.Param(jnp.asarray(rng.normal(size=(d_in, d_out)) / np.sqrt(d_in), jnp.float32),
                     axes=("proj_in", "embed"))


class TwoTokenProjector(Projector):
    """k = 2: one linear map to 2 * H, split into the passage's two input vectors."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0):
        self.in_dim, self.out_dim, self.kind = in_dim, out_dim, "test_two_token"
        self.tokens_per_passage, self.uses_query = 2, False
        self.w = _param(np.random.default_rng(seed), in_dim, 2 * out_dim)

    def __call__(self, passages, query=None):
        return (passages @ self.w[...]).reshape(passages.shape[0], 2, self.out_dim)


QUERIES_SEEN: list[np.ndarray] = []       # every query array QueryRecordingProjector was called with


class QueryRecordingProjector(Projector):
    """k = 1, conditioned on the query: W p + V q; each call's query [N, E] is appended to QUERIES_SEEN
    (a host callback, so it records inside jit too)."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0):
        self.in_dim, self.out_dim, self.kind = in_dim, out_dim, "test_query_recording"
        self.tokens_per_passage, self.uses_query = 1, True
        rng = np.random.default_rng(seed)
        self.w, self.v = _param(rng, in_dim, out_dim), _param(rng, in_dim, out_dim)

    def __call__(self, passages, query=None):
        jax.debug.callback(lambda q: QUERIES_SEEN.append(np.array(q)), query)
        return (passages @ self.w[...] + query @ self.v[...])[:, None, :]
