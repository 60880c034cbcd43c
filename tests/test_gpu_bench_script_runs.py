"""tools/bench_gpu.py, the preset the accelerator machine runs, works end to end on tiny shapes
(CI has no GPU; this keeps the prepared script from rotting between the sessions that get one)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_preset_prints_its_decoder_and_rerank_tables_on_a_tiny_model():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_gpu.py"), "--smoke", "--queries", "2",
                           "--repeats", "2"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for row in ("| decode step, batch 1, cache 512 |", "| decode step, batch 8, cache 512 |", "| prefill 256 tokens",
                "| PE-Rank top-20 one window, 1 query at once |", "| PE-Rank top-100 window 20/10, 8 queries at once |"):
        assert row in out, out
    rerank = [ln for ln in out.splitlines() if ln.startswith("| PE-Rank top-100")]
    assert len(rerank) == 2 and all(int(ln.split("|")[4]) > 180 and ln.split("|")[5].strip() == "180"
                                    for ln in rerank), rerank        # 9 windows of 20: 180 decode steps
