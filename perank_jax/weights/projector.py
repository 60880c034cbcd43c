"""Projector weights on disk: `load_projector` from a PE-Rank checkpoint directory, a
.safetensors file, an .npz of numpy arrays (never unpickled) or, only when trusted, a torch .bin;
the tensors are in torch's layout (see perank_jax.models.projector)."""
from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.models.projector import PREFIXES, Projector, build_projector
from perank_jax.core.sharding import named_sharding
from perank_jax.weights.io import SafetensorsCheckpoint, SafetensorsFile, WeightError, check_keymap, place, read_npz


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
    """({key: shape}, get) of the projector tensors in an .npz (numpy arrays only; never unpickled)."""
    tensors = read_npz(src, "npz/safetensors projector file", "save the projector as .safetensors (the default) "
                       "or with np.savez(path, **projector.export_torch())",
                       keep=lambda k: k.startswith(PREFIXES) or "projector" in k)
    tensors = {(k if k.startswith(PREFIXES) else "projector." + k.split("projector.", 1)[-1]): v
               for k, v in tensors.items()}
    return {k: v.shape for k, v in tensors.items()}, tensors.__getitem__


def load_projector(source: str | os.PathLike, kind: str, in_dim: int, out_dim: int, *, options: dict | None = None,
                   dtype=jnp.float32, param_dtype=jnp.float32, allow_pickle: bool = False,
                   mesh=None) -> Projector:
    """Projector `kind` (a registered name, "pkg.module:Class" or a legacy projector_type; `options` its
    projector_options) with weights read from `source` (dir of safetensors, one .safetensors, an .npz
    of numpy arrays (never unpickled), or a torch .bin with allow_pickle=True), under the keys the
    projector declares (`weight_keys`), each placed by its logical axes. Shapes are checked; every
    problem is listed at once."""
    proj = build_projector(kind, in_dim, out_dim, options, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    if not proj.weight_keys():
        return proj
    name, present, get = _read_tensors(source, allow_pickle)
    prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in present)), PREFIXES[0])
    present = {k: v for k, v in present.items() if k.startswith(prefix)}
    check_keymap(f"{name} (projector {proj.kind})", present, proj.torch_keys(prefix))
    for key, (path, transposed) in proj.weight_keys(prefix).items():
        arr = get(key)
        if not np.all(np.isfinite(np.asarray(arr, np.float32))):
            raise WeightError(f"{name}: tensor {key!r} has non-finite values")
        param = proj.param_at(path)
        shape = tuple(param[...].shape)
        axes = param.get_metadata().get("axes")
        sharding = named_sharding(mesh, axes, shape) if mesh is not None and axes is not None else None
        param[...] = place(lambda idx, a=arr, t=transposed: (np.asarray(a).T if t else np.asarray(a))[idx],
                           shape, param_dtype, sharding)
    return proj
