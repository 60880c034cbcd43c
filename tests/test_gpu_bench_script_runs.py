"""The accelerator preset (tools/bench_gpu_torch.py, then tools/bench_gpu.py) works end to end on tiny shapes.

CI has no GPU; this keeps the prepared script from rotting between the sessions that get one."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_preset_prints_its_tables_beside_the_torch_reference_on_a_tiny_model(tmp_path):
    ref = tmp_path / "torch.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_gpu_torch.py"), "--smoke", "--queries", "1",
                           "--out", str(ref)], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch_rows = {r["depth"]: r for r in json.loads(ref.read_text())["rows"]}
    assert torch_rows[20]["generated"] == 20 and torch_rows[100]["generated"] == 180, torch_rows
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_gpu.py"), "--smoke", "--queries", "2",
                           "--repeats", "2", "--torch-json", str(ref)], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for row in ("| decode step, batch 1, cache 512 |", "| decode step, batch 8, cache 512 |", "| prefill 256 tokens",
                "| PE-Rank top-20 one window, 1 query at once |", "| PE-Rank top-100 window 20/10, 8 queries at once |"):
        assert row in out, out
    rerank = [ln for ln in out.splitlines() if ln.startswith("| PE-Rank top-100")]
    assert len(rerank) == 2 and all(int(ln.split("|")[4]) > 180 and ln.split("|")[5].strip() == "180"
                                    for ln in rerank), rerank        # 9 windows of 20: 180 decode steps
    # the reference column: its own token counts (no shared prefix: more processed tokens) and a speed-up
    assert all(f"({torch_rows[100]['processed']:.0f}, 180)" in ln and ln.rstrip(" |").endswith("x") for ln in rerank)
    assert torch_rows[100]["processed"] > int(rerank[0].split("|")[4]), (torch_rows, rerank)
    top20 = [ln for ln in out.splitlines() if ln.startswith("| PE-Rank top-20")]
    assert all(int(ln.split("|")[4]) == torch_rows[20]["processed"] for ln in top20), (torch_rows, top20)  # one
    # window: no prefix to share, so both count the same prompt tokens


@pytest.mark.slow
def test_the_gpu_preset_runs_only_the_rows_asked_for_with_unrolled_layers():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_gpu.py"), "--smoke", "--unroll", "--rerank-only",
                           "--depths", "20", "--batches", "1", "--queries", "1"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "layer scan unrolled" in proc.stdout and "| decode step" not in proc.stdout, proc.stdout
    assert [ln.split("|")[1].strip() for ln in proc.stdout.splitlines() if ln.startswith("| PE-Rank top")] == \
        ["PE-Rank top-20 one window, 1 query at once"], proc.stdout
