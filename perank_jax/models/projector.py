"""The projector: maps a dense passage embedding into the LLM's input-embedding space.

Types (as in PE-Rank / LLaVA's `build_projector`):
  mlp{N}x_gelu  N Linears with exact (erf) GELU between them: emb -> hidden -> ... -> hidden.
                The paper's `mlp2x_gelu` is Linear(768->4096), GELU, Linear(4096->4096).
  linear        one Linear(emb -> hidden)
  identity      no weights (emb must already be `hidden` wide)

Weights are stored in JAX layout (kernel [in, out]) with logical sharding axes
(`axes` metadata, as in the decoder; perank_jax.sharding.RULES maps them).
On disk they use torch's layout: nn.Sequential indices 0, 2, 4, ... ([out, in] weights) under `model.projector.` or `projector.`
(a lone nn.Linear for `linear`: `model.projector.weight` / `.bias`).

`project(graphdef, state, emb)` is the one jit-compiled pure function used by both
training and inference. Reading projector files lives in perank_jax.weights.projector.
"""
from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


PREFIXES = ("model.projector.", "projector.")
_MLP = re.compile(r"^mlp(\d{1,4})x_gelu$")
MAX_MLP_LAYERS = 16


def num_linears(kind: str) -> int:
    """0 for identity, 1 for linear, N for mlpNx_gelu; ValueError for anything else."""
    if kind == "identity":
        return 0
    if kind == "linear":
        return 1
    m = _MLP.match(kind) if isinstance(kind, str) else None
    if m and 1 <= int(m.group(1)) <= MAX_MLP_LAYERS:
        return int(m.group(1))
    raise ValueError(f"unknown projector_type {kind!r} (expected mlp<N>x_gelu with 1 <= N <= {MAX_MLP_LAYERS}, "
                     "linear or identity)")


def layer_axes(i: int, n: int) -> tuple[str, str]:
    return ("proj_in" if i == 0 else "proj_hidden", "embed" if i == n - 1 else "proj_hidden")


class _Linear(nnx.Module):
    def __init__(self, d_in: int, d_out: int, axes: tuple[str, str], *, rngs: nnx.Rngs,
                 dtype, param_dtype):
        bound = 1.0 / np.sqrt(d_in)  # torch nn.Linear's default init
        k = jax.random.uniform(rngs.params(), (d_in, d_out), param_dtype, -bound, bound)
        b = jax.random.uniform(rngs.params(), (d_out,), param_dtype, -bound, bound)
        self.kernel = nnx.Param(k, axes=axes)
        self.bias = nnx.Param(b, axes=(axes[1],))
        self.dtype = dtype

    def __call__(self, x):
        x = x.astype(self.dtype)
        return x @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)


class Projector(nnx.Module):
    def __init__(self, kind: str, in_dim: int, out_dim: int, *, rngs: nnx.Rngs | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        n = num_linears(kind)
        if n == 0 and in_dim != out_dim:
            raise ValueError(f"identity projector needs embedding_size == hidden_size, got {in_dim} != {out_dim}")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.kind, self.in_dim, self.out_dim, self.dtype = kind, in_dim, out_dim, dtype
        self.layers = nnx.List([
            _Linear(in_dim if i == 0 else out_dim, out_dim, layer_axes(i, n), rngs=rngs,
                    dtype=dtype, param_dtype=param_dtype) for i in range(n)])

    def init_isometry(self, scale: float, seed: int = 0) -> "Projector":
        """(`linear` only) Start from `scale` times a random isometry (kernel rows orthonormal, bias 0):
        projected vectors keep the encoder's geometry (inner products times scale^2), instead of
        torch's uniform init. When the embedding is wider than the LLM (in > out) the kernel's
        columns are orthonormal instead: an orthogonal projection onto a random out-dim subspace,
        scaled. Returns self."""
        if self.kind != "linear":
            raise ValueError(f"an isometric start needs the linear projector, not {self.kind!r}")
        wide = self.in_dim > self.out_dim      # e.g. 768-d mpnet into SmolLM2's 576: a random projection
        shape = (self.in_dim, self.out_dim) if wide else (self.out_dim, self.in_dim)
        g = np.random.default_rng(seed).standard_normal(shape)
        q, r = np.linalg.qr(g)                                   # orthonormal columns
        q = q * np.sign(np.diag(r))[None, :]
        layer = self.layers[0]
        layer.kernel[...] = jnp.asarray(scale * (q if wide else q.T), layer.kernel[...].dtype)
        layer.bias[...] = jnp.zeros_like(layer.bias[...])
        return self

    def __call__(self, emb):
        x = emb.astype(self.dtype)
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = jax.nn.gelu(x, approximate=False)
            x = layer(x)
        return x

    # --- torch layout in / out -------------------------------------------------------
    def torch_keys(self, prefix: str = "model.projector.") -> dict[str, tuple[int, ...]]:
        """Expected torch state-dict keys and shapes ([out, in] weights)."""
        out = {}
        n = len(self.layers)
        for i in range(n):
            d_in = self.in_dim if i == 0 else self.out_dim
            stem = prefix if self.kind == "linear" else f"{prefix}{2 * i}."
            out[stem + "weight"] = (self.out_dim, d_in)
            out[stem + "bias"] = (self.out_dim,)
        return out

    def export_torch(self, prefix: str = "model.projector.") -> dict[str, np.ndarray]:
        """numpy tensors in torch layout, ready for safetensors."""
        tensors = {}
        keys = list(self.torch_keys(prefix))
        for i, layer in enumerate(self.layers):
            tensors[keys[2 * i]] = np.asarray(layer.kernel[...]).T
            tensors[keys[2 * i + 1]] = np.asarray(layer.bias[...])
        return tensors


@partial(jax.jit, static_argnums=0)
def project(graphdef, state, passages, query=None):
    """THE projection, used by training and inference: `graphdef, state = nnx.split(projector)`;
    passages [N, E] (and query [N, E], the list's query vector per row) -> [N, k, H], k the
    projector's `tokens_per_passage`. The query is passed only to projectors with `uses_query`.
    A projector returning another shape or a non-float dtype is refused (ValueError naming it)."""
    proj = nnx.merge(graphdef, state)
    name = type(proj).__qualname__
    if getattr(proj, "uses_query", False):
        if query is None:
            raise ValueError(f"projector {name} uses the query, but no query vector was given")
        out = proj(passages, query=query)
    else:
        out = proj(passages)
    if getattr(out, "ndim", None) == 2:                  # [N, H]: one vector per passage
        out = out[:, None, :]
    want = (passages.shape[0], int(getattr(proj, "tokens_per_passage", 1)), int(proj.out_dim))
    shape, dtype = tuple(getattr(out, "shape", ())), getattr(out, "dtype", None)
    if shape != want or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"projector {name} returned shape {shape} dtype {dtype} for {passages.shape[0]} "
                         f"passages; expected shape {want} (passages, tokens_per_passage, out_dim), a float dtype")
    return out
