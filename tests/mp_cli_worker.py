"""One process of the multi-process `perank encode` / `perank rerank` tests (helpers_processes.run_cli):
`python mp_cli_worker.py PROCESS_ID NUM_PROCESSES PORT DIE_AFTER GLOB perank-args...` runs `perank
ARGS --distributed` with the coordinator flags on one CPU device. ARGS may hold several commands
separated by `--then` (helpers_processes.THEN): they run one after the other in the same processes
(one launch: jax starts and joins the job once), each announcing `command I exited CODE`; the first
that fails ends the process with its status. DIE_AFTER > 0: the process
SIGKILLs itself right after the DIE_AFTER-th file whose name matches GLOB is renamed into place
(a hard death in the middle of the run, at a chosen point)."""
import fnmatch
import os
import signal
import sys

pid, nproc, port, die_after, pattern = sys.argv[1:6]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ["JAX_PLATFORMS"] = "cpu"

if int(die_after) > 0:
    real_replace, seen = os.replace, []

    def replace_then_die(src, dst, *a, **kw):
        real_replace(src, dst, *a, **kw)
        if fnmatch.fnmatch(os.path.basename(dst), pattern):
            seen.append(dst)
            if len(seen) == int(die_after):
                os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace_then_die

from perank_jax.cli import main  # noqa: E402

commands, current = [], []
for arg in sys.argv[6:]:
    if arg == "--then":
        commands.append(current)
        current = []
    else:
        current.append(arg)
commands.append(current)
for i, command in enumerate(commands):
    code = main(command + ["--distributed", "--coordinator-address", f"localhost:{port}",
                           "--num-processes", nproc, "--process-id", pid])
    print(f"command {i} exited {code}", flush=True)
    if code:
        sys.exit(code)
