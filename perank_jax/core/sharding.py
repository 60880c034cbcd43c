"""Mesh construction and THE logical-axis rules table.

Every weight and key activation in perank-jax is annotated with *logical* axis
names ("embed", "heads", "mlp", ...). This module is the single place that maps
them onto the physical mesh axes ("data", "fsdp", "tensor"). A logical axis
whose size does not divide evenly over its mesh axes is left replicated, so the
same model code runs on 1 device, on a (2, 4) CPU test mesh and on a pod.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    # activations
    "batch": ("data", "fsdp"),
    "seq": None,
    "cache_seq": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    "passages": None,
    # weights
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "proj_in": None,
    "proj_hidden": "tensor",
    "norm": None,
    "enc_embed": None,
    "enc_heads": None,
    "enc_mlp": None,
}


def make_mesh(shape: Sequence[int] = (1, 1, 1), axis_names: Sequence[str] = MESH_AXES,
              devices=None) -> Mesh:
    """A Mesh with Auto axis types (jax 0.10 defaults make_mesh to Explicit)."""
    shape = tuple(int(s) for s in shape)
    devices = jax.devices() if devices is None else list(devices)
    n = int(np.prod(shape))
    if n > len(devices):
        raise ValueError(f"mesh shape {shape} needs {n} devices, only {len(devices)} available")
    dev = np.asarray(devices[:n]).reshape(shape)
    try:
        from jax.sharding import AxisType
        return Mesh(dev, tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape))
    except (ImportError, TypeError):  # older jax: all axes are Auto
        return Mesh(dev, tuple(axis_names))


def logical_to_spec(axes: Sequence[str | None] | None, shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, rules: dict | None = None) -> P:
    """PartitionSpec for a tensor with the given logical axes.

    With `shape` and `mesh` given, a mesh axis that does not divide the
    dimension (or is absent from the mesh, or already used) is dropped.
    """
    if axes is None:
        return P()
    rules = RULES if rules is None else rules
    used: set[str] = set()
    out = []
    for i, ax in enumerate(axes):
        target = rules.get(ax) if ax is not None else None
        if ax is not None and ax not in rules:
            raise KeyError(f"logical axis {ax!r} has no entry in perank_jax.core.sharding.RULES")
        if target is None:
            out.append(None)
            continue
        names = (target,) if isinstance(target, str) else tuple(target)
        keep = []
        size = 1
        for name in names:
            if name in used:
                continue
            if mesh is not None:
                if name not in mesh.shape:
                    continue
                msize = mesh.shape[name]
                if shape is not None and shape[i] % (size * msize) != 0:
                    continue
                size *= msize
            keep.append(name)
        used.update(keep)
        out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return P(*out)


def named_sharding(mesh: Mesh, axes, shape=None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))


def constrain(x, axes, mesh: Mesh | None):
    """with_sharding_constraint by logical axes; a no-op without a mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, axes, x.shape))



def shard_rows(arrays, mesh: Mesh | None):
    """Host arrays placed on `mesh` with their first dimension (the rows of a batch) split by the
    "batch" rule and the rest replicated; returned unchanged without a mesh."""
    if mesh is None:
        return tuple(arrays)
    return tuple(jax.device_put(a, named_sharding(mesh, ("batch",) + (None,) * (np.ndim(a) - 1), np.shape(a)))
                 for a in arrays)
