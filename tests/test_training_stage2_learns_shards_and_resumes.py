"""Stage-2 training end to end on a tiny synthetic ranking task (random 2-layer decoder):
it learns (held-out top-1 far above random), a step on a (2,4) mesh of 8 fake CPU devices
equals the single-device step, a run killed mid-way and resumed ends bit-identical to an
uninterrupted one, and the export loads as a PE-Rank checkpoint.

All runs share one compiled step (same config => same executable; see train.step._COMPILED); the
`perank train` processes share a persistent compilation cache (the second loads what the first compiled)."""
import json

import jax
import numpy as np
import pytest
from fixtures import stage2_folder
from helpers_processes import compile_cache_env, free_port, sigint_default

from perank_jax.train.config import load_train_config
from perank_jax.train.loop import Run, fit, train

STEPS = 64
FAST = "xla_options={xla_backend_optimization_level: 0}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stage2")
    stage2_folder(d, 256, n_eval=64)
    return d


def overrides(files, out, *extra):
    """`key=value` overrides of configs/tiny.stage2.yaml shared by every run here (and the CLI)."""
    return [f"model.decoder={files / 'dec'}", f"data.train={files / 'train.jsonl'}", f"data.eval={files / 'eval.jsonl'}",
            f"data.embeddings={files / 'emb.npz'}", f"output_dir={out}", "data.buckets=[32,64]", "data.max_len=64",
            "optim.lr=1e-2", f"optim.max_steps={STEPS}", FAST, *extra]


def cfg_for(files, out, *extra):
    return load_train_config("configs/tiny.stage2.yaml", overrides(files, out, *extra))


def assert_same_export_and_metrics(run_a, run_b):
    """Byte-identical exported tensors and identical metrics logs."""
    from perank_jax.weights.io import SafetensorsCheckpoint
    a, b = (SafetensorsCheckpoint(r / "export") for r in (run_a, run_b))
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        np.testing.assert_array_equal(np.asarray(a.get(k)), np.asarray(b.get(k)), err_msg=k)
    lines = lambda r: [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]
    assert lines(run_a) == lines(run_b)


def host(tree):
    return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


@pytest.fixture(scope="module")
def uninterrupted(files):
    seen = {}

    def on_step(step, state):
        if step == 3:
            seen["params3"] = host(state["params"])
    done = fit(cfg_for(files, files / "run_a"), on_step=on_step)
    return {**done.summary, "params3": seen["params3"], "trainer": done.run.trainer, "params": done.state["params"]}


def test_stage2_raises_heldout_top1_far_above_random(uninterrupted, files):
    s = uninterrupted
    print(f"held-out top-1: before {s['initial_eval_top1']:.3f}, after {s['eval_top1']:.3f} "
          f"(random 0.200); eval ListMLE {s['initial_eval_loss1']:.3f} -> {s['eval_loss1']:.3f}")
    assert s["eval_top1"] >= 0.55 and s["eval_top1"] > s["initial_eval_top1"] + 0.25
    assert s["eval_loss1"] < s["initial_eval_loss1"] - 0.2
    assert s["trainer"].traces.count == 1                    # one bucket pair, compiled once
    lines = [json.loads(x) for x in (files / "run_a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, STEPS + 1))
    assert (files / "run_a" / "metrics.png").stat().st_size > 1000
    # the export is a PE-Rank checkpoint: decoder + projector in one safetensors, config fields
    conf = json.loads((files / "run_a" / "export" / "config.json").read_text())
    assert conf["projector_type"] == "mlp2x_gelu" and conf["embedding_size"] == 16
    from perank_jax.weights.projector import load_projector
    from perank_jax.weights.decoder import load_decoder
    proj = load_projector(files / "run_a" / "export", "mlp2x_gelu", 16, 32)
    np.testing.assert_array_equal(np.asarray(proj.layers[0].kernel[...]),
                                  s["params"]["projector"]["layers"][0]["kernel"])
    dec = load_decoder(files / "run_a" / "export", ignore=lambda k: "projector" in k)
    np.testing.assert_array_equal(np.asarray(dec.model.q[...]), s["params"]["decoder"]["q"])


def test_step_on_2x4_mesh_equals_single_device_step(uninterrupted, files):
    run = Run(cfg_for(files, files / "run_mesh", "mesh.shape=[2,4,1]"))
    assert dict(run.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    state = run.trainer.init_state()
    q = state["params"]["decoder"]["q"]
    assert len(q.sharding.device_set) == 8 and q.sharding.spec[1] == "fsdp"   # really sharded
    for step in range(3):
        state, metrics = run.trainer.step(state, run.batch(run.train_data, run.order.indices(step)))
    got, want = host(state["params"]), uninterrupted["params3"]
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), got, want))
    print(f"max |param difference| after 3 steps, (2,4) mesh vs 1 device: {max(diffs):.2e}")
    assert max(diffs) < 1e-5


def test_killed_and_resumed_run_is_bit_identical(uninterrupted, files):
    from perank_jax.cli import main

    class Killed(Exception):
        pass

    def kill_after_7(step, state):
        if step == 7:          # checkpoints at 5; steps 6, 7 are lost with the process
            raise Killed()
    out = files / "run_b"
    with pytest.raises(Killed):
        train(cfg_for(files, out, "checkpoint.every=5"), on_step=kill_after_7)
    assert (out / "checkpoints" / "5").is_dir()
    assert main(["train", "configs/tiny.stage2.yaml", *overrides(files, out, "checkpoint.every=5")]) == 0  # CLI resumes
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["resumed_from"] == 5
    assert_same_export_and_metrics(files / "run_a", out)
    kept = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [60, STEPS]                                                  # keep the last 2


def test_sigkilled_training_process_resumes_bit_identical(uninterrupted, files):
    """A real `perank train` process, checkpointing every step (asynchronously), is SIGKILLed
    once a few checkpoints are on disk, aiming at a moment when the next save is in flight
    (a torn `N.orbax-checkpoint-tmp` is left behind); `perank train` again resumes from
    the last complete checkpoint and ends byte-identical to the uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from perank_jax.cli import main
    out = files / "run_k"
    args = ["train", "configs/tiny.stage2.yaml", *overrides(files, out, "checkpoint.every=1", "checkpoint.keep=2")]
    ckpts = out / "checkpoints"
    finished = lambda: sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []
    saving = lambda: any(not p.name.isdigit() and "tmp" in p.name for p in ckpts.iterdir())
    with open(files / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "perank_jax.cli", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=compile_cache_env(dict(os.environ), files / "jax_cache"))
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline and (not finished() or max(finished()) < 3):
            time.sleep(0.005)
        soon = time.time() + 2.0                       # aim at a moment when a save is in flight
        while proc.poll() is None and time.time() < soon and not saving():
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (files / "killed.log").read_text()[-3000:]
    at_kill = finished()
    left = sorted(p.name for p in ckpts.iterdir() if not p.name.isdigit())          # e.g. a torn save
    assert not (out / "export").exists() and 3 <= max(at_kill) < STEPS
    assert main(args) == 0
    resumed = json.loads((out / "summary.json").read_text())
    print(f"killed with checkpoints {at_kill} on disk (other entries: {left}); resumed from {resumed['resumed_from']}")
    assert resumed["resumed_from"] == max(at_kill)
    assert_same_export_and_metrics(files / "run_a", out)


def test_metrics_log_drops_a_torn_last_line_on_resume(tmp_path):
    from perank_jax.core.config import ConfigError
    from perank_jax.train.metrics_log import MetricsLog
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    MetricsLog(p, 2, True)
    assert p.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        MetricsLog(p, 2, True)
    assert p.read_text().count("\n") == 3                     # nothing rewritten


@pytest.mark.slow
def test_two_processes_with_4_devices_each_equal_one_process_with_8(files, tmp_path):
    """jax.distributed on localhost (gloo CPU collectives): 2 processes x 4 fake devices, each
    feeding its half of every batch, against 1 process x 8 devices; same (2,4,1) mesh."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    worker = str(Path(__file__).with_name("mp_train_worker.py"))
    args = [f"model.decoder={files / 'dec'}", f"data.train={files / 'train.jsonl'}",
            f"data.embeddings={files / 'emb.npz'}", f"output_dir={tmp_path / 'mp'}", "data.buckets=[32,64]",
            "data.max_len=64", "optim.lr=1e-2", f"optim.max_steps={STEPS}", FAST]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = str(free_port())
    cmd = lambda out, pid, n, devs: [sys.executable, worker, str(out), str(pid), str(n), port, str(devs), *args]
    procs = [subprocess.Popen(cmd(tmp_path / "two.npz", i, 2, 4), env=env, cwd=os.getcwd(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    one = subprocess.run(cmd(tmp_path / "one.npz", 0, 1, 8), env=env, cwd=os.getcwd(),
                         capture_output=True, text=True, timeout=600)
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)
    a, b = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    print("losses, 2 processes x 4 devices:", a["losses"], " 1 process x 8 devices:", b["losses"])
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-6)
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


def test_ctrl_c_stops_training_with_exit_130_and_a_checkpoint_that_resumes_bit_identical(uninterrupted, files):
    """SIGINT (Ctrl-C) to a real `perank train` that never checkpoints on its own
    (checkpoint.every=0): it saves the last finished step, exits 130 with one line and no
    export, and `perank train` again resumes there and ends byte-identical to the
    uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from perank_jax.cli import main
    out = files / "run_int"
    args = ["train", "configs/tiny.stage2.yaml", *overrides(files, out, "checkpoint.every=0", "log_every=1")]
    log_path = files / "interrupted.log"
    metrics = out / "metrics.jsonl"
    steps_logged = lambda: metrics.read_text().count('"loss"') if metrics.exists() else 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "perank_jax.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=compile_cache_env(dict(os.environ), files / "jax_cache"), preexec_fn=sigint_default)
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline and steps_logged() < 5:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    text = log_path.read_text()
    assert proc.returncode == 130 and "interrupted" in text and "Traceback" not in text, text[-3000:]
    saved = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 5 <= saved[0] < STEPS and not (out / "export").exists()
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == saved[0]
    assert_same_export_and_metrics(files / "run_a", out)


def test_model_embedding_dim_that_disagrees_with_the_embeddings_is_refused(files, tmp_path):
    from perank_jax.core.config import ConfigError
    with pytest.raises(ConfigError, match=r"model.embedding_dim is 99 but the passage embeddings .* have 16"):
        Run(cfg_for(files, tmp_path / "dim", "model.embedding_dim=99"))
    assert Run(cfg_for(files, tmp_path / "dim16", "model.embedding_dim=16")).projector.in_dim == 16
