"""The training loop: build a run from a TrainConfig, run the sharded steps, checkpoint, resume
exactly, log and export (checkpointing.py, metrics_log.py and export.py hold those parts).

    perank train configs/tiny.stage2.yaml output_dir=runs/x optim.max_steps=20

Exact resume: a step is a pure function of (state, batch) and batch k is a pure function
of (data seed, k) (train.data.Order), so restoring params + optimiser state + step (the
data position) from the last checkpoint and continuing gives the same bytes as a run that
was never interrupted. The checkpoint also records the data fingerprint and seed and refuses
to resume a run whose data or batch layout changed.
"""
from __future__ import annotations

import hashlib
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from perank_jax.core.constants import DTYPES
from perank_jax.core.atomic import atomic_json
from perank_jax.core.config import ConfigError
from perank_jax.core.processes import init_distributed as start_processes
from perank_jax.train import data as D
from perank_jax.core.outputs import claim_dir, dir_lock
from perank_jax.train.checkpointing import (open_manager, quiet_failed_saves, restore_state, run_settings,
                                             save_state)
from perank_jax.train.config import TrainConfig
from perank_jax.data.training_records import record_template
from perank_jax.train.export import check_records_template, export
from perank_jax.train.metrics_log import MetricsLog, plot_metrics
from perank_jax.train.step import TrainStep
from perank_jax.weights.packaged import resolve_model_path



def init_distributed(mesh_cfg) -> None:
    if mesh_cfg.distributed:
        start_processes(mesh_cfg.coordinator_address, mesh_cfg.num_processes, mesh_cfg.process_id)


def resolve_mesh_shape(shape, n_devices: int) -> tuple[int, ...]:
    shape = list(shape)
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        if n_devices % rest:
            raise ConfigError(f"mesh.shape {shape}: {n_devices} devices do not divide by {rest}")
        shape[shape.index(-1)] = n_devices // rest
    return tuple(shape)


def make_embedder(cfg: TrainConfig):
    from perank_jax.train import embeddings as E
    d = cfg.data
    enc = (E.encoder_embedder(resolve_model_path(cfg.model.encoder), d.encoder_max_len, d.append_eos)
           if cfg.model.encoder and not d.embeddings else None)
    if d.embeddings:
        return E.table_embedder(d.embeddings)
    if d.embedding_cache:
        return E.cache_embedder(d.embedding_cache, fallback=enc)
    if enc is None:
        raise ConfigError("no passage embeddings: set model.encoder, data.embeddings or data.embedding_cache")
    return enc


def scalar(x) -> float:
    """A replicated (possibly multi-process) scalar as a Python float, read from a local copy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return float(np.asarray(x))


def _fingerprint(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class Run:
    """Everything one training run needs, built from the config (see `build`)."""

    def __init__(self, cfg: TrainConfig):
        from perank_jax.core.sharding import axis_rules
        with axis_rules(cfg.mesh.rules):          # the config's rules place the weights (TrainStep keeps them)
            self._build(cfg)

    def _build(self, cfg: TrainConfig):
        from flax import nnx
        from perank_jax.weights.decoder import load_decoder
        from perank_jax.models.projector import build_projector
        from perank_jax.weights.projector import load_projector
        from perank_jax.core.sharding import make_mesh
        init_distributed(cfg.mesh)
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.main = jax.process_index() == 0
        self.mesh = make_mesh(resolve_mesh_shape(cfg.mesh.shape, jax.device_count()))
        cdt, pdt = DTYPES[cfg.compute_dtype], DTYPES[cfg.param_dtype]
        self.decoder = load_decoder(resolve_model_path(cfg.model.decoder), dtype=cfg.compute_dtype, mesh=self.mesh,
                                    param_dtype=cfg.param_dtype, remat=cfg.remat)
        self.tokenizer = self.decoder.tokenizer
        if self.tokenizer is None:
            raise ConfigError(f"{cfg.model.decoder}: {self.decoder.tokenizer_error or 'the decoder has no tokenizer'}")
        embed = make_embedder(cfg)
        dim = embed.dim
        if cfg.model.embedding_dim is not None and cfg.model.embedding_dim != dim:
            raise ConfigError(f"model.embedding_dim is {cfg.model.embedding_dim} but the passage embeddings "
                              f"({cfg.data.embeddings or cfg.data.embedding_cache or cfg.model.encoder}) have "
                              f"{dim} dimensions: fix or remove model.embedding_dim")
        hidden = self.decoder.config.hidden_size
        if cfg.model.projector_init:
            self.projector = load_projector(cfg.model.projector_init, cfg.model.projector, dim, hidden,
                                            options=cfg.model.projector_options, dtype=cdt, param_dtype=pdt)
        else:
            self.projector = build_projector(cfg.model.projector, dim, hidden, cfg.model.projector_options,
                                             rngs=nnx.Rngs(cfg.seed), dtype=cdt, param_dtype=pdt,
                                             where="model.projector_options")
            if cfg.model.projector_isometry:
                if not hasattr(self.projector, "init_isometry"):
                    raise ConfigError(f"model.projector_isometry needs the linear projector, not "
                                      f"{self.projector.kind!r}")
                self.projector.init_isometry(cfg.model.projector_isometry, cfg.seed)
        d = cfg.data
        self.uses_query = bool(self.projector.uses_query)
        kw = dict(max_len=d.max_len, max_passages=d.max_passages, use_content_view=d.use_content_view,
                  tokens_per_passage=int(self.projector.tokens_per_passage),
                  query_slot=cfg.stage == 2 and cfg.model.query_token)
        records = list(D.read_jsonl(d.train))
        self.record_templates = ({} if cfg.stage == 1 else
                                 {t: getattr(r, "line", i + 1) for i, r in reversed(list(enumerate(records)))
                                  if (t := record_template(r)) is not None})
        check_records_template(self, cfg.model.prompt_template)
        self.train_data = D.prepare(records, self.tokenizer, cfg.stage, embed,
                                    source=d.train, **kw)
        self.eval_data = (D.prepare(list(D.read_jsonl(d.eval)), self.tokenizer, cfg.stage, embed, source=d.eval, **kw)
                          if d.eval else None)
        for prep in (self.train_data, self.eval_data):
            has_query = prep is not None and bool(prep.query_idx)
            if prep is not None and cfg.stage == 2 and has_query != cfg.model.query_token and \
                    not (has_query and self.uses_query):
                raise ConfigError(f"{prep.source}: records {'carry' if has_query else 'lack'} 'query_text' but "
                                  f"model.query_token is {cfg.model.query_token}; build the data and the config alike")
            if prep is not None and self.uses_query and not has_query:
                raise ConfigError(f"{prep.source}: the projector {type(self.projector).__name__} uses the query, but "
                                  "the records carry no 'query_text'; build them with the query")
        self.order = D.Order(len(self.train_data), cfg.global_batch, d.seed)
        if self.order.steps_per_epoch == 0:
            raise ConfigError(f"{d.train}: {len(self.train_data)} records are fewer than global_batch {cfg.global_batch}")
        self.total_steps = cfg.optim.max_steps or D.num_batches(self.train_data, cfg.global_batch, cfg.optim.epochs)
        self.rows = D.process_rows(cfg.global_batch, jax.process_index(), jax.process_count())
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.trainer = TrainStep(cfg, self.decoder.model, self.projector, self.mesh, self.total_steps)
        self.meta = {"data_fingerprint": _fingerprint(d.train), "data_seed": d.seed, "records": len(self.train_data),
                     "global_batch": cfg.global_batch, "stage": cfg.stage, "total_steps": self.total_steps,
                     "settings": run_settings(cfg)}
        if cfg.model.query_feedback[0] > 0:         # it changes what the batches hold (absent = off, as before)
            self.meta["query_feedback"] = list(cfg.model.query_feedback)

    def batch(self, prep, idx) -> dict:
        local = D.collate(prep, idx, self.cfg.data.buckets, self.cfg.data.max_passages, pad_id=self.pad_id,
                          query_feedback=tuple(self.cfg.model.query_feedback), query_vector=self.uses_query)
        self.last_tokens = int(sum(v.sum() for k, v in local.items() if k.endswith("mask")))  # real tokens, all views
        return self.trainer.global_batch({k: v[self.rows] for k, v in local.items()})

    def evaluate(self, params) -> dict:
        prep, gb = self.eval_data, self.cfg.global_batch
        sums, n = {}, 0
        for s in range(len(prep) // gb):
            m = self.trainer.evaluate(params, self.batch(prep, np.arange(s * gb, (s + 1) * gb)))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + scalar(v)
            n += 1
        return {f"eval_{k}": v / max(n, 1) for k, v in sums.items()}


def export_latest(cfg: TrainConfig, out_dir) -> tuple[int, Path]:
    """Export the latest complete checkpoint of cfg.output_dir (e.g. of a run still training, to
    evaluate it) to out_dir/export (and out_dir/adapter for LoRA runs): (step, export dir)."""
    run = Run(cfg)
    mngr = open_manager(run.out, run.cfg.checkpoint.keep)
    try:
        state, step = restore_state(mngr, run.trainer.init_state(), run.meta, run.cfg.checkpoint.resume)
        if step == 0:
            raise ConfigError(f"{run.out / 'checkpoints'}: no complete checkpoint to export")
        return step, export(run, state["params"], Path(out_dir) / "export")
    finally:
        mngr.close()


# ----------------------------------------------------------------------------- the loop
class StopAtStepBoundary:
    """Ctrl-C during training stops after the step in flight, once it is logged and checkpointed,
    so the run resumes exactly there (a second Ctrl-C stops at once). Active only in the main
    thread, and never where SIGINT is ignored (e.g. a background job)."""

    def __enter__(self):
        self.requested, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            handler = signal.getsignal(signal.SIGINT)
            if handler not in (signal.SIG_IGN, None):
                self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


@dataclass
class Trained:
    """What `fit` returns: the summary `train` returns (JSON-able, also in summary.json) and, for
    callers that go on working in-process (tests, notebooks), the live run and final state."""
    summary: dict
    run: Run
    state: dict


def train(cfg: TrainConfig, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train (resuming from output_dir's latest checkpoint), export, and return the summary."""
    return fit(cfg, on_step).summary


# what a run writes into output_dir: a directory holding any of these is refused unless it is a run
TRAIN_OUTPUTS = ("config.yaml", "metrics.jsonl", "metrics.png", "summary.json", "checkpoints", "export")


def fit(cfg: TrainConfig, on_step: Callable[[int, dict], None] | None = None) -> Trained:
    """`train`, keeping the live run and final state. The main process locks output_dir (a second
    run into it refuses) and claims it (a directory of other files named like ours is refused)."""
    init_distributed(cfg.mesh)
    with quiet_failed_saves():       # mesh.rules: Run places the weights under them, TrainStep traces under them
        if jax.process_index() != 0:
            return _fit(cfg, on_step)
        with dir_lock(cfg.output_dir, "train"):
            claim_dir(cfg.output_dir, "train", TRAIN_OUTPUTS, ours=("checkpoints",))
            return _fit(cfg, on_step)


def _fit(cfg: TrainConfig, on_step) -> Trained:
    run = Run(cfg)
    out = run.out
    out.mkdir(parents=True, exist_ok=True)
    mngr = open_manager(run.out, run.cfg.checkpoint.keep)
    try:                              # a checkpoint of other settings is refused before config.yaml changes
        state, start = restore_state(mngr, run.trainer.init_state(), run.meta, run.cfg.checkpoint.resume)
    except BaseException:
        mngr.close()
        raise
    if run.main:
        from perank_jax.core.config_files import dump_yaml
        dump_yaml(cfg, out / "config.yaml")
    log = MetricsLog(out / "metrics.jsonl", start, run.main)
    every = cfg.checkpoint.every
    bar = None
    if cfg.progress and run.main:
        from tqdm import tqdm
        bar = tqdm(total=run.total_steps, initial=start, desc=f"stage {cfg.stage}", dynamic_ncols=True)
    initial = {}
    if run.eval_data is not None and start == 0:
        ev0 = run.evaluate(state["params"])
        log.write({"step": 0, **ev0})
        initial = {"initial_" + k: v for k, v in ev0.items()}
    t0, tokens = time.time(), 0
    try:
        with StopAtStepBoundary() as stop:
            for step in range(start, run.total_steps):
                batch = run.batch(run.train_data, run.order.indices(step))
                tokens += run.last_tokens
                state, metrics = run.trainer.step(state, batch)
                done = step + 1
                if done % cfg.log_every == 0 or done == run.total_steps:
                    rec = {"step": done, **{k: scalar(v) for k, v in metrics.items()}}
                    log.write(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                if run.eval_data is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < run.total_steps:
                    log.write({"step": done, **run.evaluate(state["params"])})
                if (every and done % every == 0 or stop.requested) and done < run.total_steps:
                    save_state(mngr, state, done, run.meta)     # asynchronous; a crash mid-save leaves no checkpoint
                if bar is not None:
                    bar.update(1)
                if on_step is not None:
                    on_step(done, state)
                if stop.requested:                          # Ctrl-C: step `done` is logged and being saved
                    raise KeyboardInterrupt
    except BaseException:
        mngr.wait_until_finished()                     # an interrupted run keeps the checkpoints it started
        mngr.close()
        raise
    if bar is not None:
        bar.close()
    elapsed = time.time() - t0
    final = run.total_steps
    if mngr.latest_step() != final:
        save_state(mngr, state, final, run.meta)
    mngr.wait_until_finished()
    summary = {"steps": final, "resumed_from": start, "seconds": elapsed,
               "tokens_per_s": tokens / elapsed if elapsed > 0 and tokens else None, **initial}
    if run.eval_data is not None:
        ev = run.evaluate(state["params"])
        log.write({"step": final, **ev})
        summary.update(ev)
    export_dir = export(run, state["params"], out / "export")
    if run.main:
        plot_metrics(out / "metrics.jsonl", out / "metrics.png")
        atomic_json(out / "summary.json", summary)
    mngr.close()
    summary["export"] = str(export_dir)
    return Trained(summary, run, state)

