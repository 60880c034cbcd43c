"""The built-in projector kinds: `linear`, `identity`, `mlp`, `multi_token` and `film`.

  linear    one Linear(E -> H)                        torch keys model.projector.{weight,bias}
  identity  no weights (E must equal H)
  mlp       [pre-norm] Linear(E -> W), GELU, ..., Linear(W -> H): `depth` Linears, exact (erf) GELU
            between them, W = `width` (0: H), pre_norm none | layernorm | rmsnorm on the input
            (LLaVA / PCC style). torch keys model.projector.{0,2,4,..}.{weight,bias} as the
            reference's nn.Sequential (its `mlp2x_gelu` is mlp depth 2); a pre-norm's weights are
            stored generically (model.projector.norm.scale / .bias).
  multi_token  k = `tokens` vectors per passage (COCOM / xRAG-length style): [Linear(E -> W), GELU,]
            Linear(-> k * H) split into k; weights stored generically.
  film      query-conditioned (FiLM): Linear(p) * (1 + G q) + B q, with G and B [E, H] starting at
            zero, so it starts as the linear projector; weights stored generically.

Weights are in JAX layout (kernel [in, out]) with logical axes (perank_jax.core.sharding.RULES);
on disk the Linears use torch's [out, in] layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.core.config import setting
from perank_jax.models.projector_base import Projector, register_projector

NORMS = ("none", "layernorm", "rmsnorm")
MAX_MLP_LAYERS = 16


class Dense(nnx.Module):
    """Linear layer with torch nn.Linear's default init; kernel [in, out] with logical `axes`."""

    def __init__(self, d_in: int, d_out: int, axes: tuple[str, str], *, rngs: nnx.Rngs, dtype, param_dtype):
        bound = 1.0 / np.sqrt(d_in)
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (d_in, d_out), param_dtype, -bound, bound), axes=axes)
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (d_out,), param_dtype, -bound, bound), axes=(axes[1],))
        self.dtype = dtype

    def __call__(self, x):
        x = x.astype(self.dtype)
        return x @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)


class Norm(nnx.Module):
    """LayerNorm (scale + bias) or RMSNorm (scale) over the last axis, eps 1e-5, computed in float32."""

    def __init__(self, dim: int, kind: str, param_dtype):
        self.kind = kind
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), axes=("proj_in",))
        if kind == "layernorm":
            self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), axes=("proj_in",))

    def __call__(self, x):
        x = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x = x - x.mean(-1, keepdims=True)
        x = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-5) * self.scale[...].astype(jnp.float32)
        return x + self.bias[...].astype(jnp.float32) if self.kind == "layernorm" else x


@register_projector("linear")
class LinearProjector(Projector):
    """One Linear(E -> H): one vector per passage."""

    def __init__(self, in_dim, out_dim, options=None, *, rngs=None, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(in_dim, out_dim, options, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.layer = Dense(in_dim, out_dim, ("proj_in", "embed"), rngs=rngs or nnx.Rngs(0), dtype=dtype,
                           param_dtype=param_dtype)

    def __call__(self, passages, query=None):
        return self.layer(passages)[:, None, :]

    def weight_keys(self, prefix="model.projector."):
        return {prefix + "weight": (("layer", "kernel"), True), prefix + "bias": (("layer", "bias"), False)}

    def init_isometry(self, scale: float, seed: int = 0) -> "LinearProjector":
        """Start from `scale` times a random isometry (kernel rows orthonormal, bias 0): projected vectors
        keep the encoder's geometry (inner products times scale^2), instead of torch's uniform init.
        When the embedding is wider than the LLM (in > out, e.g. 768-d mpnet into SmolLM2's 576) the
        kernel's columns are orthonormal instead: an orthogonal projection onto a random out-dim
        subspace, scaled."""
        self.layer.kernel[...] = jnp.asarray(isometry(self.in_dim, self.out_dim, scale, seed), self.layer.kernel[...].dtype)
        self.layer.bias[...] = jnp.zeros_like(self.layer.bias[...])
        return self


@register_projector("identity")
class IdentityProjector(Projector):
    """No weights: the encoder vector is the LLM input (E must equal H)."""

    def __init__(self, in_dim, out_dim, options=None, *, rngs=None, dtype=jnp.float32, param_dtype=jnp.float32):
        if in_dim != out_dim:
            raise ValueError(f"identity projector needs embedding_size == hidden_size, got {in_dim} != {out_dim}")
        super().__init__(in_dim, out_dim, options, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, passages, query=None):
        return passages.astype(self.dtype)[:, None, :]


@dataclass(frozen=True)
class MLPOptions:
    depth: int = setting(int, 2, 1, MAX_MLP_LAYERS)      # Linear layers
    width: int = setting(int, 0, 0, 1 << 17)             # hidden width; 0: the LLM's hidden size
    pre_norm: str = setting(str, "none", choices=NORMS)  # a norm on the encoder vector first


@register_projector("mlp")
class MLPProjector(Projector):
    """[pre-norm] then `depth` Linears with exact GELU between them: one vector per passage."""
    Options = MLPOptions

    def __init__(self, in_dim, out_dim, options=None, *, rngs=None, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(in_dim, out_dim, options, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        o, rngs = self.options, rngs or nnx.Rngs(0)
        width = o.width or out_dim
        dims = [in_dim] + [width] * (o.depth - 1) + [out_dim]
        axes = ["proj_in"] + ["proj_hidden"] * (o.depth - 1) + ["embed"]
        self.norm = Norm(in_dim, o.pre_norm, param_dtype) if o.pre_norm != "none" else None
        self.layers = nnx.List([Dense(dims[i], dims[i + 1], (axes[i], axes[i + 1]), rngs=rngs, dtype=dtype,
                                      param_dtype=param_dtype) for i in range(o.depth)])

    def __call__(self, passages, query=None):
        x = passages if self.norm is None else self.norm(passages)
        for i, layer in enumerate(self.layers):
            x = layer(jax.nn.gelu(x, approximate=False) if i else x)
        return x[:, None, :]

    def weight_keys(self, prefix="model.projector."):
        keys = {k: v for k, v in super().weight_keys(prefix).items() if v[0][0] == "norm"}
        for i in range(len(self.layers)):
            keys[f"{prefix}{2 * i}.weight"] = (("layers", i, "kernel"), True)
            keys[f"{prefix}{2 * i}.bias"] = (("layers", i, "bias"), False)
        return keys


def isometry(in_dim: int, out_dim: int, scale: float, seed: int) -> np.ndarray:
    """`scale` times a random isometry as a kernel [in, out] (rows orthonormal; columns when in > out)."""
    wide = in_dim > out_dim
    g = np.random.default_rng(seed).standard_normal((in_dim, out_dim) if wide else (out_dim, in_dim))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))[None, :]
    return scale * (q if wide else q.T)


@dataclass(frozen=True)
class MultiTokenOptions:
    tokens: int = setting(int, 4, 1, 64)                 # k vectors per passage
    width: int = setting(int, 0, 0, 1 << 17)             # a GELU hidden layer of this width first; 0: none


@register_projector("multi_token")
class MultiTokenProjector(Projector):
    """k = `tokens` vectors per passage: [Linear(E -> W), GELU,] Linear(-> k * H), split into k."""
    Options = MultiTokenOptions

    def __init__(self, in_dim, out_dim, options=None, *, rngs=None, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(in_dim, out_dim, options, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        o, rngs = self.options, rngs or nnx.Rngs(0)
        self.tokens_per_passage = o.tokens
        self.hidden = (Dense(in_dim, o.width, ("proj_in", "proj_hidden"), rngs=rngs, dtype=dtype,
                             param_dtype=param_dtype) if o.width else None)
        self.out = Dense(o.width or in_dim, o.tokens * out_dim, ("proj_hidden" if o.width else "proj_in", "embed"),
                         rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, passages, query=None):
        x = passages if self.hidden is None else jax.nn.gelu(self.hidden(passages), approximate=False)
        return self.out(x).reshape(passages.shape[0], self.tokens_per_passage, self.out_dim)

    def init_isometry(self, scale: float, seed: int = 0) -> "MultiTokenProjector":
        """(no hidden layer) Each of the k vectors starts as the linear kind's isometric start, so the
        passage's key (the mean of its k vectors) starts where the linear projector does."""
        if self.hidden is not None:
            raise ValueError("an isometric start needs multi_token without a hidden layer (width 0)")
        k = isometry(self.in_dim, self.out_dim, scale, seed)
        self.out.kernel[...] = jnp.asarray(np.tile(k, (1, self.tokens_per_passage)), self.out.kernel[...].dtype)
        self.out.bias[...] = jnp.zeros_like(self.out.bias[...])
        return self


@register_projector("film")
class FiLMProjector(Projector):
    """Query-conditioned: Linear(p) * (1 + G q) + B q (FiLM); G, B start at zero (= the linear kind)."""
    uses_query = True

    def __init__(self, in_dim, out_dim, options=None, *, rngs=None, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(in_dim, out_dim, options, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.layer = Dense(in_dim, out_dim, ("proj_in", "embed"), rngs=rngs or nnx.Rngs(0), dtype=dtype,
                           param_dtype=param_dtype)
        self.gamma = nnx.Param(jnp.zeros((in_dim, out_dim), param_dtype), axes=("proj_in", "embed"))
        self.beta = nnx.Param(jnp.zeros((in_dim, out_dim), param_dtype), axes=("proj_in", "embed"))

    def __call__(self, passages, query=None):
        q = query.astype(self.dtype)
        gain = 1.0 + q @ self.gamma[...].astype(self.dtype)
        return (self.layer(passages) * gain + q @ self.beta[...].astype(self.dtype))[:, None, :]

    def init_isometry(self, scale: float, seed: int = 0) -> "FiLMProjector":
        """The linear part starts as the linear kind's isometric start (G, B stay zero)."""
        self.layer.kernel[...] = jnp.asarray(isometry(self.in_dim, self.out_dim, scale, seed), self.layer.kernel[...].dtype)
        self.layer.bias[...] = jnp.zeros_like(self.layer.bias[...])
        return self
