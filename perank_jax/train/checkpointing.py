"""Training checkpoints on disk (orbax): open a run's manager, save a step's state with its
metadata, restore the latest one exactly (same shardings), refusing one made with other data."""
from __future__ import annotations

import logging
import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from perank_jax.core.config import ConfigError


# settings that do not change what a step computes (how long, how often, where, how shown)
NOT_TRAJECTORY = {"output_dir", "checkpoint", "mesh", "progress", "log_every", "eval_every", "optim.epochs",
                  "optim.max_steps", "data.train", "data.eval"}


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def run_settings(cfg) -> dict:
    """The TrainConfig settings a resumed run must share with its checkpoint (optim.lr,
    data.embeddings, the model, the losses, ...): everything but NOT_TRAJECTORY. Lists become
    tuples-as-lists so the JSON round trip compares equal."""
    return {k: v for k, v in flat(asdict(cfg)).items()
            if k not in NOT_TRAJECTORY and k.split(".")[0] not in NOT_TRAJECTORY}


class _QuietOrbaxThreads(logging.Filter):
    def filter(self, record):
        return not (record.levelno >= logging.ERROR and "/orbax/" in record.pathname.replace("\\", "/"))


class _QuietOrbaxTasks(logging.Filter):
    """asyncio's "Task exception was never retrieved" for an orbax write task, logged when the task
    is garbage-collected (often at exit, after the run has reported the error): dropped."""

    def filter(self, record):
        return not (record.levelno >= logging.ERROR and "orbax" in record.getMessage())


_TASKS = _QuietOrbaxTasks()


def _closed_loop_noise(tp, value, tb) -> bool:
    """RuntimeError('Event loop is closed') raised in asyncio's call_soon_threadsafe: tensorstore
    completing a write after orbax's save loop shut down (it only repeats an error already raised)."""
    last = traceback.extract_tb(tb)[-1:] if tb is not None else []
    return (tp is RuntimeError and str(value) == "Event loop is closed" and bool(last)
            and last[0].filename.endswith(os.path.join("asyncio", "base_events.py")))


def _unraisablehook(u):                 # tensorstore reports a failed callback as "unraisable"
    if not _closed_loop_noise(u.exc_type, u.exc_value, u.exc_traceback):
        _unraisablehook.previous(u)


@contextmanager
def quiet_failed_saves():
    """A checkpoint save that fails in the background (a full disk) is reported ONCE: orbax logs it
    from each of its threads with a traceback, tensorstore's callbacks report "Event loop is closed"
    as unraisable exceptions (both dropped while this is active), asyncio logs its unretrieved
    write tasks, possibly at exit (that filter stays installed and drops only those), and the same
    error is raised in the main thread, where the CLI prints it as one line."""
    quiet, logger = _QuietOrbaxThreads(), logging.getLogger("absl")
    logger.addFilter(quiet)
    if _TASKS not in logging.getLogger("asyncio").filters:
        logging.getLogger("asyncio").addFilter(_TASKS)
    previous = sys.unraisablehook
    if previous is not _unraisablehook:
        _unraisablehook.previous, sys.unraisablehook = previous, _unraisablehook
    try:
        yield
    finally:
        logger.removeFilter(quiet)
        if sys.unraisablehook is _unraisablehook:
            sys.unraisablehook = previous


def open_manager(out_dir: Path, keep: int):
    """The orbax CheckpointManager of a run: out_dir/checkpoints/<step>, the last `keep` kept."""
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager((Path(out_dir) / "checkpoints").resolve(), options=opts)


def save_state(mngr, state, step: int, meta: dict) -> None:
    """Start saving `state` (params, optimiser state) and `meta` (data fingerprint, seed, ...) as
    checkpoint `step`; asynchronous: mngr.wait_until_finished() before relying on it."""
    meta = dict(meta, step=step)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
              force=True)


def restore_state(mngr, state, meta: dict, resume: bool = True):
    """The latest checkpoint's state (same shardings as `state`) and step, or (state, 0); refuses
    a checkpoint whose `meta` (data, settings) differs from this run's."""
    step = mngr.latest_step()
    if step is None or not resume:
        return state, 0
    saved_meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if "settings" not in saved_meta:                     # a checkpoint from before settings were saved
        meta = {k: v for k, v in meta.items() if k != "settings"}
    meta, saved_meta = flat(meta), flat(saved_meta)
    keys = (set(meta) | set(saved_meta)) - {"step"}       # a setting only one side has differs too
    changed = {k.removeprefix("settings."): (saved_meta.get(k), meta.get(k))
               for k in sorted(keys) if saved_meta.get(k) != meta.get(k)}
    if changed:
        raise ConfigError(f"{mngr.directory}: checkpoint {step} was made with other data or settings "
                          f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                          "use a new output_dir or checkpoint.resume=false")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    return restored, step
