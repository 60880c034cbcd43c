"""Sharded, jit-compiled training steps for both PE-Rank stages.

State layout (plain nested dicts, so orbax and optax see ordinary pytrees):
    state  = {"params": trainable, "opt": optax state, "step": int32}
    frozen = parameters that never change (passed in, never returned, never donated)
  stage 1:            trainable = {"projector"}               frozen = {"decoder"}
  stage 2 (full):     trainable = {"projector", "decoder"}    frozen = {}
  stage 2 (LoRA r):   trainable = {"projector", "lora"}       frozen = {"decoder"}
The encoder is never part of a step: passage embeddings are precomputed (frozen encoder).

One step = gradient accumulation over `grad_accum` microbatches (lax.scan), global-norm
clipping, AdamW with linear warmup + cosine decay. Parameters may be kept in float32
(master weights) while the modules compute in bfloat16. Every array carries an explicit
NamedSharding derived from the logical axes and perank_jax.core.sharding.RULES; the step is
jax.jit with in_shardings/out_shardings and donates the old state.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from perank_jax.core.buckets import TraceCounter
from perank_jax.models import lora as lora_lib
from perank_jax.models.perank import hidden_states, listwise_logits, project_lists, scale_query_slot
from perank_jax.core.sharding import axis_rules, logical_to_spec, named_sharding
from perank_jax.train.losses import next_token_xent, stage2_loss, top1_accuracy


# ----------------------------------------------------------------------------- params & shardings
def pure_params(module: nnx.Module) -> tuple[Any, dict, dict]:
    """(graphdef, params as a nested dict of arrays, logical axes as a matching nested dict)."""
    graphdef, state = nnx.split(module)
    params = nnx.to_pure_dict(state)
    axes: dict = {}
    for path, var in nnx.to_flat_state(state):
        node = axes
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = var.get_metadata().get("axes")
    return graphdef, params, axes


def _is_axes(x):
    return x is None or (isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x))


def shardings_for(axes_tree, params_tree, mesh) -> Any:
    return jax.tree.map(lambda a, p: named_sharding(mesh, a, p.shape), axes_tree, params_tree, is_leaf=_is_axes)


def place(tree, shardings):
    """Put every leaf on its sharding. Host-complete values (identical on every process) are
    sliced per device, so this works across processes too."""
    def put(x, s):
        if isinstance(x, jax.Array) and x.sharding == s:
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.jit(lambda a: a, out_shardings=s)(x)
        if isinstance(x, jax.Array) and s.is_fully_addressable:
            return jax.device_put(x, s)                 # single process: no host round trip
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])
    return jax.tree.map(put, tree, shardings)


# ----------------------------------------------------------------------------- optimiser
def make_optimizer(optim, total_steps: int):
    """AdamW + warmup/cosine (or constant) + global-norm clipping; returns (tx, schedule)."""
    warmup = int(math.ceil(optim.warmup_ratio * total_steps))
    if optim.schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(0.0, optim.lr, max(warmup, 0), max(total_steps, warmup + 1), 0.0)
    elif optim.schedule == "constant":
        sched = optax.join_schedules([optax.linear_schedule(0.0, optim.lr, max(warmup, 1)),
                                      optax.constant_schedule(optim.lr)], [warmup]) if warmup else \
            optax.constant_schedule(optim.lr)
    else:
        raise ValueError(f"unknown lr schedule {optim.schedule!r} (cosine or constant)")
    parts = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm and optim.clip_norm > 0 else []
    parts.append(optax.adamw(sched, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay))
    return optax.chain(*parts), sched


# optax >= 0.2.5 has optax.tree.norm (optax.global_norm is deprecated); older versions lack it
_tree_norm = optax.tree.norm if hasattr(optax, "tree") and hasattr(optax.tree, "norm") else optax.global_norm


# ----------------------------------------------------------------------------- the loss
class StepFns:
    """Holds the graphdefs and options; `loss(params, frozen, batch)` is pure."""

    def __init__(self, stage: int, dec_gd, proj_gd, loss_cfg=None, lora_cfg=None, use_content_view=True,
                 query_scale: float = 1.0):
        self.stage, self.dec_gd, self.proj_gd, self.query_scale = stage, dec_gd, proj_gd, float(query_scale)
        self.loss_cfg, self.lora_cfg, self.use_content_view = loss_cfg, lora_cfg, use_content_view

    def decoder_params(self, params, frozen) -> dict:
        """The decoder's plain parameters: trained, or frozen with the LoRA adapters folded in."""
        dec_params = params["decoder"] if "decoder" in params else frozen["decoder"]
        if "lora" in params:
            dec_params = lora_lib.merge(dec_params, params["lora"], self.lora_cfg.alpha, self.lora_cfg.rank)
        return dec_params

    def loss(self, params, frozen, batch):
        """The stage's loss and metrics; the model maths is perank_jax.models.perank's, as in decoding."""
        dec = nnx.merge(self.dec_gd, self.decoder_params(params, frozen))
        e = project_lists(self.proj_gd, params["projector"], batch["emb"], batch.get("query"))   # [B, n, k, H]
        if self.stage == 1:
            h = hidden_states(dec, e, batch["ids"], batch["mask"], batch["ph_pos"])
            loss, count = next_token_xent(dec.head(h), batch["targets"], batch["weights"])
            return loss, {"loss": loss, "tokens": count}
        valid, ranking = batch["valid"], batch["ranking"]
        e = scale_query_slot(e, valid, self.query_scale)
        L1 = listwise_logits(dec, e, batch, "wo")
        L2 = listwise_logits(dec, e, batch, "w") if self.use_content_view and "w_ids" in batch else None
        c = self.loss_cfg
        total, m = stage2_loss(L1, L2, ranking, valid, c.w1, c.w2, c.w_kl, c.weighting, c.w_single)
        return total, {"loss": total, **m, "top1": top1_accuracy(L1, ranking, valid)}


def _accumulate(fns: StepFns, params, frozen, batch, accum: int):
    """Mean loss, metrics and grads over `accum` microbatches (rows i, i+accum, ... form microbatch i)."""
    vg = jax.value_and_grad(fns.loss, has_aux=True)
    if accum == 1:
        (_, metrics), grads = vg(params, frozen, batch)
        return metrics, grads
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)

    def body(carry, mb):
        (_, m), g = vg(params, frozen, mb)
        return jax.tree.map(jnp.add, carry, (m, g)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: vg(params, frozen, jax.tree.map(lambda x: x[0], micro))))
    (metrics, grads), _ = jax.lax.scan(body, (zeros[0][1], zeros[1]), micro)
    return jax.tree.map(lambda x: x / accum, (metrics, grads))


# ----------------------------------------------------------------------------- the trainer core
_COMPILED: dict = {}


def _build_jits(fns: StepFns, tx, schedule, accum, state_sh, frozen_sh, param_sh, batch_sh, rep, xla) -> dict:
    traces = TraceCounter()

    @traces.counted
    def step(state, frozen, batch):
        metrics, grads = _accumulate(fns, state["params"], frozen, batch, accum)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "opt": opt, "step": state["step"] + 1}
        metrics = dict(metrics, grad_norm=_tree_norm(grads), lr=schedule(state["step"]))
        return new, metrics

    return {"traces": traces,
            "step": jax.jit(step, in_shardings=(state_sh, frozen_sh, batch_sh), out_shardings=(state_sh, rep),
                            donate_argnums=(0,), compiler_options=xla or None),
            "eval": jax.jit(lambda params, frozen, batch: fns.loss(params, frozen, batch)[1],
                            in_shardings=(param_sh, frozen_sh, batch_sh), out_shardings=rep,
                            compiler_options=xla or None)}


class TrainStep:
    """Builds the sharded state and the jitted step for a decoder + projector pair."""

    def __init__(self, cfg, decoder: nnx.Module, projector: nnx.Module, mesh, total_steps: int):
        """Built under the config's sharding rules (Run enters them); every step, evaluation and state
        it makes later enters them again, so what it traces is constrained as its weights were placed."""
        self.cfg, self.mesh = cfg, mesh
        self.rules = list(cfg.mesh.rules)
        dec_gd, dec_params, dec_axes = pure_params(decoder)
        proj_gd, proj_params, proj_axes = pure_params(projector)
        lora_cfg = cfg.lora if cfg.stage == 2 and cfg.lora.rank > 0 else None
        self.fns = StepFns(cfg.stage, dec_gd, proj_gd, cfg.loss, lora_cfg, cfg.data.use_content_view,
                           cfg.model.query_scale if cfg.model.query_token else 1.0)
        params, axes = {"projector": proj_params}, {"projector": proj_axes}
        frozen, frozen_axes = {}, {}
        if cfg.stage == 1 or lora_cfg:
            frozen, frozen_axes = {"decoder": dec_params}, {"decoder": dec_axes}
        else:
            params["decoder"], axes["decoder"] = dec_params, dec_axes
        if lora_cfg:
            params["lora"] = lora_lib.init(dec_params, lora_cfg.targets, lora_cfg.rank, jax.random.key(cfg.seed))
            axes["lora"] = lora_lib.axes(params["lora"])
        self.param_shardings = shardings_for(axes, params, mesh)
        self.frozen_shardings = shardings_for(frozen_axes, frozen, mesh)
        self.frozen = place(frozen, self.frozen_shardings)
        self.tx, self.schedule = make_optimizer(cfg.optim, total_steps)
        rep = NamedSharding(mesh, P())
        abstract_opt = jax.eval_shape(self.tx.init, params)
        self.opt_shardings = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract_opt, self.param_shardings,
            transform_non_params=lambda _: rep, is_leaf=lambda x: isinstance(x, NamedSharding))
        self.state_shardings = {"params": self.param_shardings, "opt": self.opt_shardings, "step": rep}
        self.batch_sharding = NamedSharding(mesh, logical_to_spec(("batch",), (cfg.global_batch,), mesh))
        self.init_params = params
        key = (cfg.stage, dec_gd, proj_gd, repr(cfg.model), repr(cfg.loss), repr(cfg.lora), repr(cfg.optim), cfg.grad_accum,
               cfg.global_batch, cfg.data.use_content_view, total_steps, mesh, repr(sorted(cfg.xla_options.items())),
               repr(self.rules))
        if key not in _COMPILED:     # identical runs (e.g. a resumed one in the same process) share executables
            _COMPILED[key] = _build_jits(self.fns, self.tx, self.schedule, cfg.grad_accum, self.state_shardings,
                                         self.frozen_shardings, self.param_shardings, self.batch_sharding, rep,
                                         dict(cfg.xla_options))
        self._jits = _COMPILED[key]

    @property
    def traces(self) -> TraceCounter:
        """Traces (= compilations) of the step function: one per length bucket."""
        return self._jits["traces"]

    def init_state(self) -> dict:
        with axis_rules(self.rules):
            return self._init_state()

    def _init_state(self) -> dict:
        params = place(self.init_params, self.param_shardings)
        opt = jax.jit(self.tx.init, in_shardings=(self.param_shardings,), out_shardings=self.opt_shardings)(params)
        step = place(jnp.zeros((), jnp.int32), self.state_shardings["step"])
        return {"params": params, "opt": opt, "step": step}

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global arrays from this process's rows (its contiguous share of the global batch)."""
        out = {}
        for k, v in local.items():
            shape = (self.cfg.global_batch,) + v.shape[1:]
            out[k] = jax.make_array_from_process_local_data(self.batch_sharding, v, shape)
        return out

    def step(self, state, batch):
        with axis_rules(self.rules):
            return self._jits["step"](state, self.frozen, batch)

    def evaluate(self, params, batch):
        with axis_rules(self.rules):
            return self._jits["eval"](params, self.frozen, batch)

    def decoder_params(self, params) -> dict:
        """Plain decoder parameters (LoRA merged) for export."""
        with axis_rules(self.rules):
            return self.fns.decoder_params(params, self.frozen)
