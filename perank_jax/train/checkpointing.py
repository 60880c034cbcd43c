"""Training checkpoints on disk (orbax): open a run's manager, save a step's state with its
metadata, restore the latest one exactly (same shardings), refusing one made with other data."""
from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from perank_jax.config import ConfigError


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
    keys = (set(meta) | set(saved_meta)) - {"step"}       # a setting only one side has differs too
    changed = {k: (saved_meta.get(k), meta.get(k)) for k in sorted(keys) if saved_meta.get(k) != meta.get(k)}
    if changed:
        raise ConfigError(f"{mngr.directory}: checkpoint {step} was made with other data or settings "
                          f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                          "use a new output_dir or checkpoint.resume=false")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    return restored, step
