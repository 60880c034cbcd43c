"""One process of the multi-process training test (run as a subprocess by
test_training_stage2_learns_shards_and_resumes.py): `python mp_train_worker.py OUT.npz PROCESS_ID
NUM_PROCESSES PORT LOCAL_DEVICES key=value...`. Runs 3 sharded stage-2 steps on a global (2,4,1)
mesh over all processes' devices, then process 0 writes the losses and the gathered parameters."""
import os
import sys

out, pid, nproc, port, ndev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from jax.experimental import multihost_utils  # noqa: E402

from perank_jax.train.config import load_train_config  # noqa: E402
from perank_jax.train.loop import Run, scalar  # noqa: E402

extra = ["mesh.shape=[2,4,1]"]
if nproc > 1:
    extra += ["mesh.distributed=true", f"mesh.coordinator_address=localhost:{port}",
              f"mesh.num_processes={nproc}", f"mesh.process_id={pid}"]
run = Run(load_train_config("configs/tiny.stage2.yaml", sys.argv[6:] + extra))
assert jax.device_count() == 8 and jax.process_count() == nproc
state = run.trainer.init_state()
losses = []
for step in range(3):
    state, m = run.trainer.step(state, run.batch(run.train_data, run.order.indices(step)))
    losses.append(scalar(m["loss"]))
params = multihost_utils.process_allgather(state["params"], tiled=True)
if pid == 0:
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(out, losses=np.asarray(losses), **flat)
