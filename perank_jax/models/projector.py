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
training and inference.
"""
from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.weights.io import SafetensorsCheckpoint, SafetensorsFile, WeightError, check_keymap, place

PREFIXES = ("model.projector.", "projector.")
_MLP = re.compile(r"^mlp(\d+)x_gelu$")


def num_linears(kind: str) -> int:
    """0 for identity, 1 for linear, N for mlpNx_gelu; ValueError for anything else."""
    if kind == "identity":
        return 0
    if kind == "linear":
        return 1
    m = _MLP.match(kind)
    if m and int(m.group(1)) >= 1:
        return int(m.group(1))
    raise ValueError(f"unknown projector_type {kind!r} (expected mlp<N>x_gelu, linear or identity)")


def _layer_axes(i: int, n: int) -> tuple[str, str]:
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
            _Linear(in_dim if i == 0 else out_dim, out_dim, _layer_axes(i, n), rngs=rngs,
                    dtype=dtype, param_dtype=param_dtype) for i in range(n)])

    def init_isometry(self, scale: float, seed: int = 0) -> "Projector":
        """(`linear` only) Start from `scale` times a random isometry (kernel rows orthonormal, bias 0):
        projected vectors keep the encoder's geometry (inner products times scale^2), instead of
        torch's uniform init. Returns self."""
        if self.kind != "linear":
            raise ValueError(f"an isometric start needs the linear projector, not {self.kind!r}")
        if self.in_dim > self.out_dim:
            raise ValueError(f"no isometry from {self.in_dim} to {self.out_dim} dimensions")
        g = np.random.default_rng(seed).standard_normal((self.out_dim, self.in_dim))
        q, r = np.linalg.qr(g)                                   # q [out, in], orthonormal columns
        q = q * np.sign(np.diag(r))[None, :]
        layer = self.layers[0]
        layer.kernel[...] = jnp.asarray(scale * q.T, layer.kernel[...].dtype)
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
def project(graphdef, state, emb):
    """Pure projection: `graphdef, state = nnx.split(projector)`; emb [..., E] -> [..., D]."""
    return nnx.merge(graphdef, state)(emb)


# --- loading ----------------------------------------------------------------------------
def _read_tensors(source: str | os.PathLike, allow_pickle: bool):
    """(name, {key: shape}, get(key)) of the projector tensors found in a dir or a file."""
    src = Path(source)
    if src.is_dir():
        # a projector-only file next to (or instead of) safetensors: .npz (no pickle) before .bin
        others = sorted((p for p in src.iterdir() if p.suffix in (".npz", ".bin") and "projector" in p.name),
                        key=lambda p: (p.suffix != ".npz", p.name))
        try:
            ckpt = SafetensorsCheckpoint(src)
        except WeightError:
            if not others:
                raise
            return _read_tensors(others[0], allow_pickle)
        keys = {k: ckpt.shape(k) for k in ckpt.keys() if k.startswith(PREFIXES)}
        if not keys and others:
            return _read_tensors(others[0], allow_pickle)
        return str(src), keys, ckpt.get
    if not src.exists():
        raise FileNotFoundError(f"{src}: projector weights not found")
    if src.suffix == ".safetensors":
        f = SafetensorsFile(src)
        return str(src), {k: f.shape(k) for k in f.keys() if k.startswith(PREFIXES)}, f.get
    if src.suffix in (".npz", ".npy"):
        return str(src), *_read_npz(src)
    if src.suffix in (".bin", ".pt", ".pth"):
        if not allow_pickle:
            raise WeightError(f"{src}: a pickle (torch) file; pass allow_pickle=True only if you trust it "
                              "(unpickling can run arbitrary code), or convert it to safetensors")
        import torch
        sd = torch.load(src, map_location="cpu", weights_only=False)
        sd = {k: v.float().numpy() for k, v in sd.items() if k.startswith(PREFIXES) or "projector" in k}
        sd = {(k if k.startswith(PREFIXES) else "projector." + k.split("projector.", 1)[-1]): v
              for k, v in sd.items()}
        return str(src), {k: v.shape for k, v in sd.items()}, sd.__getitem__
    raise WeightError(f"{src}: unsupported projector weight file (expected a directory, .safetensors, .npz "
                      "or .bin)")


def _read_npz(src: Path):
    """({key: shape}, get) of the projector tensors in an .npz (numpy arrays only; never unpickles).
    A damaged file, an object (pickled) array or a lone .npy array is a WeightError of one line."""
    bad = (f"{src}: not a valid npz/safetensors projector file" + " ({}); save the projector as "
           ".safetensors (the default) or with np.savez(path, **projector.export_torch())")
    if src.suffix == ".npy":
        raise WeightError(bad.format("a .npy file holds one unnamed array, not the named projector tensors"))
    try:
        with open(src, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise WeightError(f"{src}: cannot read projector weights ({e.strerror or e})") from None
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise WeightError(bad.format("not a zip archive, as np.savez writes"))
    try:
        with np.load(src, allow_pickle=False) as z:
            tensors = {k: z[k] for k in z.files if k.startswith(PREFIXES) or "projector" in k}
    except ValueError as e:
        why = "holds pickled object arrays, which are never loaded" if "allow_pickle" in str(e) else str(e)
        raise WeightError(bad.format(why)) from None
    except Exception as e:  # a damaged archive: BadZipFile, zlib.error, CRC / EOF / struct errors, ...
        raise WeightError(bad.format(f"{type(e).__name__}: {e}".replace("\n", " "))) from None
    for k, v in tensors.items():
        if v.dtype.kind not in "fiu":
            raise WeightError(bad.format(f"array {k!r} has dtype {v.dtype}, expected numbers"))
    tensors = {(k if k.startswith(PREFIXES) else "projector." + k.split("projector.", 1)[-1]): v
               for k, v in tensors.items()}
    return {k: v.shape for k, v in tensors.items()}, tensors.__getitem__


def load_projector(source: str | os.PathLike, kind: str, in_dim: int, out_dim: int, *,
                   dtype=jnp.float32, param_dtype=jnp.float32, allow_pickle: bool = False,
                   mesh=None) -> Projector:
    """A Projector with weights read from `source` (dir of safetensors, one .safetensors, an .npz
    of numpy arrays (never unpickled), or a torch .bin with allow_pickle=True). Shapes are checked; every problem is listed at once."""
    proj = Projector(kind, in_dim, out_dim, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    if num_linears(kind) == 0:
        return proj
    name, present, get = _read_tensors(source, allow_pickle)
    prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in present)), PREFIXES[0])
    present = {k: v for k, v in present.items() if k.startswith(prefix)}
    expected = proj.torch_keys(prefix)
    check_keymap(f"{name} (projector {kind})", present, expected)
    from perank_jax.sharding import named_sharding
    keys = list(expected)
    for i, layer in enumerate(proj.layers):
        w, b = get(keys[2 * i]), get(keys[2 * i + 1])
        for k, arr in ((keys[2 * i], w), (keys[2 * i + 1], b)):
            if not np.all(np.isfinite(np.asarray(arr, np.float32))):
                raise WeightError(f"{name}: tensor {k!r} has non-finite values")
        axes = _layer_axes(i, len(proj.layers))
        ks = named_sharding(mesh, axes, w.shape[::-1]) if mesh is not None else None
        bs = named_sharding(mesh, axes[1:], b.shape) if mesh is not None else None
        layer.kernel[...] = place(lambda idx, w=w: np.asarray(w).T[idx], w.shape[::-1], param_dtype, ks)
        layer.bias[...] = place(lambda idx, b=b: np.asarray(b)[idx], b.shape, param_dtype, bs)
    return proj
