"""Launching several local processes over jax.distributed in tests: a free coordinator port, and
`run_cli`, which runs one `perank` command as N processes (tests/mp_cli_worker.py) and waits."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

THEN = "--then"         # separates the commands of one launch (run one after the other in the same processes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def compile_cache_env(env: dict, folder) -> dict:
    """`env` with jax's persistent compilation cache in `folder`, every program kept: the child
    processes of one test module given the same folder compile each program once between them."""
    return {**env, "JAX_COMPILATION_CACHE_DIR": str(folder), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def run_cli(args: list[str], n: int = 2, die: tuple[int, int, str] | None = None, timeout: float = 300,
            compile_cache=None):
    """Run `perank ARGS --distributed` as n processes; returns [(exit status, output)] by process id.
    ARGS may chain commands with THEN: one launch runs them in turn (the output says `command I exited CODE`).
    die=(process id, k, glob): that process SIGKILLs itself after renaming its k-th file matching
    glob into place; the others are then killed too, as a job scheduler does when a task dies.
    compile_cache: a folder for jax's persistent compilation cache, shared by the launches of a test
    (each process otherwise compiles every program again, the bulk of a tiny model's run)."""
    import tempfile
    worker = str(Path(__file__).with_name("mp_cli_worker.py"))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if compile_cache is not None:
        env = compile_cache_env(env, compile_cache)
    port = str(free_port())
    procs, logs = [], []
    for i in range(n):
        k, glob = (die[1], die[2]) if die and die[0] == i else (0, "-")
        logs.append(tempfile.TemporaryFile("w+"))
        procs.append(subprocess.Popen([sys.executable, worker, str(i), str(n), port, str(k), glob, *args], env=env,
                                      stdout=logs[-1], stderr=subprocess.STDOUT, text=True))
    try:
        if die:
            procs[die[0]].wait(timeout=timeout)
            for p in procs:
                p.kill()
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    out = []
    for log in logs:
        log.seek(0)
        out.append(log.read())
        log.close()
    return list(zip(codes, out))


def sigint_default():
    """preexec_fn of a child that a test interrupts: Ctrl-C behaves as in a terminal even when the
    tests run as a background job (whose SIGINT is ignored, and an ignored signal stays ignored
    across exec) or from a thread state that blocks it (a blocked signal also stays blocked)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
