"""Mesh construction and THE logical-axis rules table.

Every weight and key activation in perank-jax is annotated with *logical* axis
names ("embed", "heads", "mlp", ...). This module is the single place that maps
them onto the physical mesh axes ("data", "fsdp", "tensor"). A logical axis
whose size does not divide evenly over its mesh axes is left replicated, so the
same model code runs on 1 device, on a (2, 4) CPU test mesh and on a pod.

`RULES` is the default table; a config overrides entries of it as a list of
[logical axis, mesh axis | [mesh axes] | null] pairs (`AXIS_RULES`, the training
config's `mesh.rules`, as MaxText's logical_axis_rules), put in force around a run
with `axis_rules(pairs)`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from perank_jax.core.config import ConfigError, Field

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


def check_axis_rules(label: str, pairs) -> list:
    """`pairs` as [[logical axis, mesh axis | [mesh axes] | None], ...]: each logical axis one of
    RULES' and named once, each mesh axis one of MESH_AXES; else one ConfigError naming `label[i]`."""
    if not isinstance(pairs, (list, tuple)):
        raise ConfigError(f"{label} must be a list of [logical axis, mesh axis | null] pairs, got {pairs!r}")
    out, seen = [], set()
    for i, pair in enumerate(pairs):
        where = f"{label}[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(f"{where} must be a [logical axis, mesh axis | null] pair, got {pair!r}")
        logical, target = pair
        if logical not in RULES:
            raise ConfigError(f"{where}: unknown logical axis {logical!r} (known: {sorted(RULES)})")
        if logical in seen:
            raise ConfigError(f"{where}: logical axis {logical!r} is named twice")
        seen.add(logical)
        names = [] if target is None else [target] if isinstance(target, str) else target
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n in MESH_AXES for n in names) \
                or len(set(names)) != len(names):
            raise ConfigError(f"{where}: unknown mesh axis in {target!r} (mesh axes: {list(MESH_AXES)}, or null)")
        out.append([logical, None if not names else names[0] if isinstance(target, str) else list(names)])
    return out


AXIS_RULES = Field(list, [[k, list(v) if isinstance(v, tuple) else v] for k, v in RULES.items()],
                   shape=check_axis_rules)
_ACTIVE: contextvars.ContextVar[dict] = contextvars.ContextVar("perank_axis_rules", default=RULES)


def rules_table(pairs) -> dict:
    """RULES with the entries `pairs` names replaced (pairs already checked by check_axis_rules)."""
    return {**RULES, **{k: tuple(v) if isinstance(v, list) else v for k, v in pairs}}


@contextlib.contextmanager
def axis_rules(pairs):
    """The rules table in force (for every placement and sharding constraint traced inside) is
    RULES overridden by `pairs`; restored on exit."""
    token = _ACTIVE.set(rules_table(check_axis_rules("axis rules", pairs)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current_rules() -> dict:
    """The logical-axis rules table in force (RULES outside `axis_rules`)."""
    return _ACTIVE.get()


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
    rules = current_rules() if rules is None else rules
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
