"""The training loop: build everything from a TrainConfig, run the sharded steps, checkpoint
with orbax, resume exactly, log, plot and export.

    perank train configs/tiny.stage2.yaml output_dir=runs/x optim.max_steps=20

Exact resume: a step is a pure function of (state, batch) and batch k is a pure function
of (data seed, k) (train.data.Order), so restoring params + optimiser state + step (the
data position) from the last checkpoint and continuing gives the same bytes as a run that
was never interrupted. The checkpoint also records the data fingerprint and seed and refuses
to resume a run whose data or batch layout changed.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from perank_jax.atomic import atomic_json, atomic_text, atomic_write
from perank_jax.config import ConfigError
from perank_jax.train import data as D
from perank_jax.train.config import TrainConfig
from perank_jax.train.step import TrainStep

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def init_distributed(mesh_cfg) -> None:
    if mesh_cfg.distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize(coordinator_address=mesh_cfg.coordinator_address,
                                   num_processes=mesh_cfg.num_processes, process_id=mesh_cfg.process_id)


def resolve_mesh_shape(shape, n_devices: int) -> tuple[int, ...]:
    shape = list(shape)
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        if n_devices % rest:
            raise ConfigError(f"mesh.shape {shape}: {n_devices} devices do not divide by {rest}")
        shape[shape.index(-1)] = n_devices // rest
    return tuple(shape)


def resolve_model_path(path: str | None) -> str | None:
    """perank_jax.weights.packaged.resolve_model_path, with an unknown name as a ConfigError."""
    from perank_jax.weights.packaged import UnknownPackagedModel, resolve_model_path as resolve
    try:
        return resolve(path)
    except UnknownPackagedModel as e:
        raise ConfigError(str(e)) from None


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
        from flax import nnx
        from perank_jax.weights.decoder import load_decoder
        from perank_jax.models.projector import Projector, load_projector
        from perank_jax.sharding import make_mesh
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
                                            dtype=cdt, param_dtype=pdt)
        else:
            self.projector = Projector(cfg.model.projector, dim, hidden, rngs=nnx.Rngs(cfg.seed),
                                       dtype=cdt, param_dtype=pdt)
            if cfg.model.projector_isometry:
                self.projector.init_isometry(cfg.model.projector_isometry, cfg.seed)
        d = cfg.data
        kw = dict(max_len=d.max_len, max_passages=d.max_passages, use_content_view=d.use_content_view)
        self.train_data = D.prepare(list(D.read_jsonl(d.train)), self.tokenizer, cfg.stage, embed,
                                    source=d.train, **kw)
        self.eval_data = (D.prepare(list(D.read_jsonl(d.eval)), self.tokenizer, cfg.stage, embed, source=d.eval, **kw)
                          if d.eval else None)
        for prep in (self.train_data, self.eval_data):
            if prep is not None and cfg.stage == 2 and prep.query_token != cfg.model.query_token:
                raise ConfigError(f"{prep.source}: records {'carry' if prep.query_token else 'lack'} 'query_text' but "
                                  f"model.query_token is {cfg.model.query_token}; build the data and the config alike")
        self.order = D.Order(len(self.train_data), cfg.global_batch, d.seed)
        if self.order.steps_per_epoch == 0:
            raise ConfigError(f"{d.train}: {len(self.train_data)} records are fewer than global_batch {cfg.global_batch}")
        self.total_steps = cfg.optim.max_steps or D.num_batches(self.train_data, cfg.global_batch, cfg.optim.epochs)
        self.rows = D.process_rows(cfg.global_batch, jax.process_index(), jax.process_count())
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.trainer = TrainStep(cfg, self.decoder.model, self.projector, self.mesh, self.total_steps)
        self.meta = {"data_fingerprint": _fingerprint(d.train), "data_seed": d.seed, "records": len(self.train_data),
                     "global_batch": cfg.global_batch, "stage": cfg.stage, "total_steps": self.total_steps}

    def batch(self, prep, idx) -> dict:
        local = D.collate(prep, idx, self.cfg.data.buckets, self.cfg.data.max_passages, pad_id=self.pad_id)
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


# ----------------------------------------------------------------------------- checkpoints
def _manager(run: Run):
    import orbax.checkpoint as ocp
    opts = ocp.CheckpointManagerOptions(max_to_keep=run.cfg.checkpoint.keep, create=True)
    return ocp.CheckpointManager((run.out / "checkpoints").resolve(), options=opts)


def _save(mngr, run: Run, state, step: int):
    import orbax.checkpoint as ocp
    meta = dict(run.meta, step=step)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
              force=True)


def _restore(mngr, run: Run, state):
    """The latest checkpoint's state (same shardings as `state`) and step, or (state, 0)."""
    import orbax.checkpoint as ocp
    step = mngr.latest_step()
    if step is None or not run.cfg.checkpoint.resume:
        return state, 0
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    changed = {k: (meta.get(k), v) for k, v in run.meta.items() if meta.get(k) != v}
    if changed:
        raise ConfigError(f"{run.out / 'checkpoints'}: checkpoint {step} was made with other data or settings "
                          f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                          "use a new output_dir or checkpoint.resume=false")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    return restored, step


def export_latest(cfg: TrainConfig, out_dir) -> tuple[int, Path]:
    """Export the latest complete checkpoint of cfg.output_dir (e.g. of a run still training, to
    evaluate it) to out_dir/export (and out_dir/adapter for LoRA runs): (step, export dir)."""
    run = Run(cfg)
    mngr = _manager(run)
    try:
        state, step = _restore(mngr, run, run.trainer.init_state())
        if step == 0:
            raise ConfigError(f"{run.out / 'checkpoints'}: no complete checkpoint to export")
        return step, export(run, state["params"], Path(out_dir) / "export")
    finally:
        mngr.close()


# ----------------------------------------------------------------------------- logs and export
class MetricsLog:
    """JSONL metrics (process 0). On resume, lines past the restored step are dropped first,
    and so is a torn last line (a process killed while appending)."""

    def __init__(self, path: Path, start_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        keep = []
        if path.exists() and start_step > 0:
            lines = path.read_text().splitlines()
            for i, ln in enumerate(lines):
                try:
                    rec = json.loads(ln)
                except json.JSONDecodeError:
                    if i == len(lines) - 1:
                        break
                    raise ConfigError(f"{path}: line {i + 1} is not JSON (a corrupt metrics log)") from None
                if rec.get("step", 0) <= start_step:
                    keep.append(ln)
        atomic_text(path, "".join(ln + "\n" for ln in keep))

    def write(self, rec: dict):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


def plot_metrics(log_path: Path, png_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [json.loads(ln) for ln in log_path.read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    if not train:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ev = [r for r in recs if "eval_loss" in r]
    if ev:
        a.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="eval loss")
    a.set_xlabel("step"), a.set_ylabel("loss"), a.legend()
    b.plot([r["step"] for r in train], [r["lr"] for r in train])
    b.set_xlabel("step"), b.set_ylabel("learning rate")
    fig.tight_layout()
    atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
    plt.close(fig)


def export(run: Run, params, out_dir: Path) -> Path:
    """Stage 1: the projector alone (projector.safetensors, torch layout, + projector_config.json);
    stage 2: a PE-Rank checkpoint directory (decoder with LoRA merged + projector) that
    PERanker.from_pretrained loads."""
    from flax import nnx
    from jax.experimental import multihost_utils
    from perank_jax.weights.io import save_safetensors_atomic
    cfg, tr = run.cfg, run.trainer
    host = lambda t: multihost_utils.process_allgather(t, tiled=True) if jax.process_count() > 1 else jax.device_get(t)
    proj = nnx.merge(tr.fns.proj_gd, host(params["projector"]))
    if not run.main:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.stage == 1:
        save_safetensors_atomic(proj.export_torch("model.projector."), out_dir / "projector.safetensors",
                                metadata={"format": "pt"})
        conf = {"projector_type": proj.kind, "embedding_size": proj.in_dim, "hidden_size": proj.out_dim,
                "decoder": resolve_model_path(cfg.model.decoder),
                "encoder_name": resolve_model_path(cfg.model.encoder) or ""}
        atomic_json(out_dir / "projector_config.json", conf)
        return out_dir
    from perank_jax.weights.perank import save_adapter, save_checkpoint
    m = cfg.model
    if "lora" in params:      # the small form: projector + LoRA factors over the named base decoder
        save_adapter(out_dir.parent / "adapter", proj, host(params["lora"]), base_decoder=_portable(m.decoder),
                     encoder_name=_portable(m.encoder), lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha,
                     encoder_max_length=cfg.data.encoder_max_len, prompt_template=m.prompt_template,
                     query_token=m.query_token, hidden_size=proj.out_dim, dtype="float16",
                     extra={"default_mode": m.default_mode, "query_scale": m.query_scale})
    dec = nnx.merge(tr.fns.dec_gd, host(tr.decoder_params(params)))
    return save_checkpoint(out_dir, dec, proj, run.tokenizer, encoder_name=resolve_model_path(m.encoder) or "",
                           prompt_template=m.prompt_template, query_token=m.query_token, query_scale=m.query_scale)


def _portable(name: str | None) -> str:
    """`packaged:` names stay names (they resolve on any machine); paths become absolute."""
    if not name:
        return ""
    return name if name.startswith("packaged:") else str(Path(resolve_model_path(name)).resolve())


# ----------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train (resuming from output_dir's latest checkpoint), export, and return a summary."""
    run = Run(cfg)
    out = run.out
    out.mkdir(parents=True, exist_ok=True)
    if run.main:
        from perank_jax.config import dump_yaml
        dump_yaml(cfg, out / "config.yaml")
    mngr = _manager(run)
    state, start = _restore(mngr, run, run.trainer.init_state())
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
    t0, tokens, done = time.time(), 0, start
    try:
        for step in range(start, run.total_steps):
            batch = run.batch(run.train_data, run.order.indices(step))
            tokens += run.last_tokens
            state, metrics, done = *run.trainer.step(state, batch), step + 1   # one statement: a Ctrl-C
                                                                                # never splits state and step
            if done % cfg.log_every == 0 or done == run.total_steps:
                rec = {"step": done, **{k: scalar(v) for k, v in metrics.items()}}
                log.write(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            if run.eval_data is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < run.total_steps:
                log.write({"step": done, **run.evaluate(state["params"])})
            if every and done % every == 0 and done < run.total_steps:
                _save(mngr, run, state, done)          # asynchronous; a crash mid-save leaves no checkpoint
            if bar is not None:
                bar.update(1)
            if on_step is not None:
                on_step(done, state)
    except KeyboardInterrupt:                          # Ctrl-C: keep the last finished step, resumable
        alive = not any(x.is_deleted() for x in jax.tree.leaves(state))   # not donated to a step in flight
        if alive and done > start and mngr.latest_step() != done:
            _save(mngr, run, state, done)
        mngr.wait_until_finished()
        mngr.close()
        raise
    except BaseException:
        mngr.wait_until_finished()                     # an interrupted run keeps the checkpoints it started
        mngr.close()
        raise
    if bar is not None:
        bar.close()
    elapsed = time.time() - t0
    final = run.total_steps
    if mngr.latest_step() != final:
        _save(mngr, run, state, final)
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
    summary["state"] = state
    summary["run"] = run
    return summary


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
