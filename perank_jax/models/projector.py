"""The projector interface and registry: a passage's dense embedding -> k vectors in the LLM's input space.

A projector is an `nnx.Module` subclass of `Projector`, registered under a name. It declares
  Options              a frozen dataclass of its own typed options (`perank_jax.core.config.setting` fields,
                       checked like every config field: a wrong type / range names the key)
  tokens_per_passage   k >= 1, the LLM input vectors one passage becomes
  uses_query           True when it needs the query's encoder vector
  in_dim, out_dim      encoder dimension E, LLM hidden size H
and maps `projector(passages [N, E], query [N, E] | None) -> [N, k, H]`. Its weights carry logical
sharding axes (`nnx.Param(..., axes=...)`; perank_jax.core.sharding.RULES places them).

Registration, three ways: `@register_projector("name")` in code; "my_pkg.my_module:MyProjector" as the
config's `projector`; the entry-point group `perank_jax.projectors` of an installed package.

Built-in kinds (perank_jax.models.projector_kinds): `linear`, `identity`, `mlp` (depth / width /
pre_norm), `multi_token` (k vectors per passage), `film` (query-conditioned). The reference's `projector_type` strings map to them (`legacy_kind`).

On disk, a projector's weights are `weight_keys()`: generically `model.projector.<nnx.path.joined.by.dots>`
in JAX layout; built-ins override it with the reference's torch keys. Reading them lives in
perank_jax.weights.projector. `project(graphdef, state, passages, query=None) -> [N, k, H]` is the one
jit-compiled pure function (training and inference).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import re
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from perank_jax.core.config import check_settings
from perank_jax.models.projector_base import REGISTRY, NoOptions, Projector, ProjectorError, register_projector
from perank_jax.models import projector_kinds  # noqa: F401  (registers the built-in kinds)


PREFIXES = ("model.projector.", "projector.")
ENTRY_POINT_GROUP = "perank_jax.projectors"
MAX_MLP_LAYERS = projector_kinds.MAX_MLP_LAYERS
_LEGACY_MLP = re.compile(r"^mlp(\d{1,4})x_gelu$")


def _entry_points() -> dict:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def registered_projectors() -> list[str]:
    """Every name a config may use: the registry (built-ins, decorators) and installed entry points."""
    return sorted(set(REGISTRY) | set(_entry_points()))


def resolve_projector(name) -> type:
    """The Projector class a config's `projector` names: a registered name, an entry point of group
    `perank_jax.projectors`, or an import path "pkg.module:Class"; one ProjectorError otherwise."""
    if not isinstance(name, str) or not name:
        raise ProjectorError(f"projector must be a registered name or \"pkg.module:Class\", got {name!r}")
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(mod_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as e:     # noqa: BLE001  (any failure of user code to import is this one line)
            raise ProjectorError(f"projector {name!r} does not import: {type(e).__name__}: "
                                 f"{' '.join(str(e).split())}") from None
        cls = obj
    else:
        eps = _entry_points()
        if name not in eps:
            raise ProjectorError(f"unknown projector {name!r}; registered: {', '.join(registered_projectors())} "
                                 "(or give an import path \"pkg.module:Class\")")
        try:
            cls = eps[name].load()
        except Exception as e:     # noqa: BLE001
            raise ProjectorError(f"projector {name!r} (entry point {eps[name].value}) does not import: "
                                 f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    if not (isinstance(cls, type) and issubclass(cls, Projector)):
        raise ProjectorError(f"projector {name!r} is {cls!r}, not a subclass of perank_jax.models.projector.Projector")
    return cls


def check_options(name: str, options, where: str = "projector_options"):
    """The typed Options instance of projector `name` from a JSON mapping (None: defaults)."""
    cls = resolve_projector(name)
    if dataclasses.is_dataclass(options) and isinstance(options, cls.Options):
        return options
    return check_settings(cls.Options, {} if options is None else options, f"{where} (projector {name!r})")


def check_projector(name, options=None, where: str = "projector_options"):
    """(name, typed Options) of a configured projector; a legacy projector_type string (mlp<N>x_gelu)
    is taken as the built-in it names. One ProjectorError / ValueError naming `where` otherwise."""
    if isinstance(name, str) and name not in REGISTRY and _LEGACY_MLP.match(name):
        name, legacy = legacy_kind(name)
        options = {**legacy, **(options or {})}
    return name, check_options(name, options, where)


def options_dict(options) -> dict:
    return dataclasses.asdict(options)


def legacy_kind(projector_type: str) -> tuple[str, dict]:
    """(projector, projector_options) of a reference `projector_type`: mlp<N>x_gelu, linear, identity."""
    if projector_type in ("linear", "identity"):
        return projector_type, {}
    m = _LEGACY_MLP.match(projector_type) if isinstance(projector_type, str) else None
    if m and 1 <= int(m.group(1)) <= MAX_MLP_LAYERS:
        return "mlp", {"depth": int(m.group(1))}
    raise ProjectorError(f"unknown projector_type {projector_type!r} (expected mlp<N>x_gelu with 1 <= N <= "
                         f"{MAX_MLP_LAYERS}, linear or identity)")


def legacy_name(name: str, options: dict) -> str | None:
    """The reference's `projector_type` string of a built-in configuration it can express, else None."""
    if name in ("linear", "identity") and not options:
        return name
    if name == "mlp" and not options.get("width") and options.get("pre_norm", "none") == "none":
        return f"mlp{options.get('depth', 2)}x_gelu"
    return None


def build_projector(name: str, in_dim: int, out_dim: int, options=None, *, rngs: nnx.Rngs | None = None,
                    dtype=jnp.float32, param_dtype=jnp.float32, where: str = "projector_options") -> Projector:
    """Projector `name` (a registered name, entry point or "pkg.module:Class", or a legacy
    projector_type) built for encoder dim `in_dim` and LLM hidden size `out_dim`, checked once on an
    abstract input (check_output): it must return [N, tokens_per_passage, out_dim] in `dtype`."""
    name, opts = check_projector(name, options, where)
    cls = resolve_projector(name)
    try:
        proj = cls(int(in_dim), int(out_dim), opts, rngs=rngs if rngs is not None else nnx.Rngs(0),
                   dtype=dtype, param_dtype=param_dtype)
    except ProjectorError:
        raise
    except ValueError as e:
        raise ProjectorError(f"projector {name!r}: {e}") from None
    proj.name = name
    check_output(proj)
    return proj


def check_output(proj: Projector, n: int = 2) -> None:
    """Refuse (one line) a projector whose output for an abstract [n, E] input (jax.eval_shape: nothing
    runs) is not [n, k, H] in its dtype."""
    cls = f"{type(proj).__module__}.{type(proj).__qualname__}"
    k = proj.tokens_per_passage
    if not (isinstance(k, int) and k >= 1):
        raise ProjectorError(f"projector {cls}: tokens_per_passage must be an integer >= 1, got {k!r}")
    x = jax.ShapeDtypeStruct((n, proj.in_dim), jnp.float32)
    q = x if proj.uses_query else None
    graphdef, state = nnx.split(proj)
    try:
        out = jax.eval_shape(lambda s, x, q: nnx.merge(graphdef, s)(x, q), state, x, q)
    except Exception as e:        # noqa: BLE001
        raise ProjectorError(f"projector {cls} fails on a [{n}, {proj.in_dim}] input: {type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]}") from None
    want, want_dtype = (n, k, proj.out_dim), jnp.dtype(proj.dtype)
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != want or dtype != want_dtype:
        raise ProjectorError(f"projector {cls} returned shape {shape} dtype {dtype} for {n} passages; expected "
                             f"shape {want} dtype {want_dtype} (N, tokens_per_passage, hidden_size)")


@partial(jax.jit, static_argnums=0)
def project(graphdef, state, passages, query=None):
    """THE projection, used by training and inference: `graphdef, state = nnx.split(projector)`;
    passages [N, E] (and query [N, E], the list's query vector per row) -> [N, k, H], k the
    projector's `tokens_per_passage`. The query is passed only to projectors with `uses_query`.
    The output's shape and dtype are not checked here: `check_output` did, once, where the projector
    entered (`build_projector`, or `PERanker` for an instance built by hand); a traced shape cannot
    depend on the data, so nothing a call could show was left unchecked."""
    proj = nnx.merge(graphdef, state)
    if getattr(proj, "uses_query", False):
        if query is None:
            raise ValueError(f"projector {type(proj).__qualname__} uses the query, but no query vector was given")
        return proj(passages, query=query)
    return proj(passages)


__all__ = ["ENTRY_POINT_GROUP", "NoOptions", "Projector", "ProjectorError", "REGISTRY", "build_projector",
           "check_options", "check_output", "legacy_kind", "legacy_name", "project", "register_projector",
           "registered_projectors", "resolve_projector"]
