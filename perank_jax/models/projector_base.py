"""The projector base class and its registry: what every projector kind is (see perank_jax.models.projector)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from flax import nnx

REGISTRY: dict[str, type] = {}


class ProjectorError(ValueError):
    """A projector that cannot be found, imported, built or used (one line, names the projector)."""


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a projector kind without any."""


class Projector(nnx.Module):
    """Base class of every projector kind: subclasses set `Options`, build their weights in
    `__init__(in_dim, out_dim, options, *, rngs, dtype, param_dtype)` after calling this one, and
    implement `__call__(passages, query=None) -> [N, tokens_per_passage, out_dim]`."""
    Options: ClassVar[type] = NoOptions
    tokens_per_passage: int = 1
    uses_query: bool = False

    def __init__(self, in_dim: int, out_dim: int, options=None, *, rngs: nnx.Rngs | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        self.in_dim, self.out_dim, self.dtype, self.param_dtype = int(in_dim), int(out_dim), dtype, param_dtype
        self.options = options if options is not None else self.Options()

    def __call__(self, passages, query=None):
        raise NotImplementedError(f"{type(self).__qualname__} must implement __call__(passages, query=None)")

    @property
    def kind(self) -> str:
        """The name this projector is configured by (registered name or "module:Class")."""
        return getattr(self, "name", None) or f"{type(self).__module__}:{type(self).__qualname__}"

    # --- weights on disk ---------------------------------------------------------------
    def weight_keys(self, prefix: str = "model.projector.") -> dict[str, tuple[tuple, bool]]:
        """{safetensors key: (nnx state path, stored transposed)} of every weight. Generic: the NNX
        path joined by dots under `prefix`, JAX layout. Kinds with a legacy layout override it."""
        state = nnx.state(self, nnx.Param)
        return {prefix + ".".join(str(p) for p in path): (tuple(path), False)
                for path, _ in nnx.to_flat_state(state)}

    def param_at(self, path: tuple) -> nnx.Variable:
        node = self
        for p in path:
            node = node[p] if isinstance(p, int) else getattr(node, p)
        return node

    def torch_keys(self, prefix: str = "model.projector.") -> dict[str, tuple[int, ...]]:
        """{key: shape on disk} of every weight (`weight_keys`)."""
        out = {}
        for key, (path, transposed) in self.weight_keys(prefix).items():
            shape = tuple(self.param_at(path)[...].shape)
            out[key] = shape[::-1] if transposed else shape
        return out

    def export_torch(self, prefix: str = "model.projector.") -> dict[str, np.ndarray]:
        """numpy tensors as they are stored (`weight_keys`), ready for safetensors."""
        out = {}
        for key, (path, transposed) in self.weight_keys(prefix).items():
            arr = np.asarray(self.param_at(path)[...])
            out[key] = arr.T if transposed else arr
        return out


def register_projector(name: str):
    """Class decorator: register a Projector subclass under `name` (the config's `projector`)."""
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Projector)):
            raise ProjectorError(f"projector {name!r}: {cls!r} is not a subclass of perank_jax.models.projector.Projector")
        REGISTRY[name] = cls
        cls.name = name
        return cls
    return deco
