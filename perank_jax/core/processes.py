"""Several processes over jax.distributed: start them, share work between them, wait for each other.

`perank train` (mesh.distributed), `perank encode` and `perank rerank` (--distributed) start the same
way: every process runs the same command and calls `init_distributed`, which passes the coordinator
address, process count and this process's id to `jax.distributed.initialize` where given (a TPU pod
slice or a SLURM job provides them itself). CPU processes talk over gloo collectives, so the same
code runs as several processes on one machine (the tests) and across hosts.

Work is shared by `share`: the items still to do (the same list on every process, so a rerun after
any process died splits only what is left) dealt round-robin. `barrier` and `gather_flags` are
collectives: every process must call them in the same order.
"""
from __future__ import annotations

import jax
import numpy as np


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
    """jax.distributed.initialize once per process (None: what the platform provides)."""
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU processes; GPU/TPU unaffected
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def rank() -> tuple[int, int]:
    """(this process's index, number of processes); (0, 1) without jax.distributed."""
    return jax.process_index(), jax.process_count()


def barrier(name: str) -> None:
    """Wait until every process has reached the barrier of this name (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def gather_flags(local: np.ndarray) -> np.ndarray:
    """Element-wise OR over all processes of a boolean vector each fills for the items it checked."""
    local = np.asarray(local, bool)
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils
    every = multihost_utils.process_allgather(local.astype(np.int32))
    return np.asarray(every).reshape(jax.process_count(), -1).any(axis=0)


def share(todo, index: int, count: int) -> list:
    """This process's items of `todo` (round-robin, so each gets an even share of what is left)."""
    return list(todo)[index::count]


def checked_here(n: int, index: int, count: int) -> list[int]:
    """Which of n items this process checks for being done (all processes together: each once)."""
    return list(range(index, n, count))
