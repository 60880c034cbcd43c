#!/usr/bin/env bash
# The one script to run on a lent accelerator machine (the `device` tool): installs nothing, reads no
# data, needs only the preinstalled jax / flax / optax / transformers and this working tree, and prints
# the tables of tools/bench_gpu.py (Mistral-7B-shaped PE-Rank: decode step vs its bandwidth roofline,
# prefill, reranking one query at a time and 8 at once, beside the HF-torch reference algorithm at the
# same shapes, run first in its own process by tools/bench_gpu_torch.py) and tools/bench_train.py (one
# stage-2 step, LoRA r=16, bf16, remat). 191 s on an H200 (2026-11-30); each part is capped by
# `timeout`, 570 s in all. With $OUT set (the device tool), the whole log is also kept in $OUT/bench_gpu.log.
#
#   bash tools/bench_gpu.sh            # on the accelerator
#   bash tools/bench_gpu.sh --serve    # on the accelerator, a second call: `perank serve` under load
#                                      # (tools/load_serve.py, shipped model, batching on vs off; needs the
#                                      # serve extra already installed, else it says so and skips; 540 s cap)
#   bash tools/bench_gpu.sh --smoke    # anywhere (CPU): tiny shapes, checks the script end to end (no serve row:
#                                      # the server's warm-up takes minutes on a CPU; tests/test_serve_http.py
#                                      # covers the server, docs/benchmarks.md has its CPU table)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"     # the accelerator image's python3 holds torch, jax and flax
"$py" -c "import jax; print('jax', jax.__version__, jax.devices())"
ref="$(mktemp -d)/torch.json"
if [ -n "${OUT:-}" ]; then exec > >(tee "$OUT/bench_gpu.log") 2>&1; fi
if [ "${1:-}" = "--serve" ]; then
  timeout 540 "$py" tools/load_serve.py --levels 1,4,8,16 --per-level 64 --max-batch 16 --queue-size 64
elif [ "${1:-}" = "--smoke" ]; then
  timeout 600 "$py" tools/bench_gpu_torch.py --smoke --queries 1 --out "$ref"
  timeout 600 "$py" tools/bench_gpu.py --smoke --torch-json "$ref"
  timeout 600 "$py" tools/bench_train.py --model mistral7b --layers 1 --batch 1 --len-wo 64 --len-w 128 \
    --passages 4 --lora-rank 4 --dtype bfloat16 --param-dtype bfloat16 --remat --steps 1
else
  timeout 120 "$py" tools/bench_gpu_torch.py --out "$ref"
  timeout 270 "$py" tools/bench_gpu.py --torch-json "$ref"
  timeout 180 "$py" tools/bench_train.py --model mistral7b --batch 4 --len-wo 256 --len-w 1024 --passages 20 \
    --lora-rank 16 --dtype bfloat16 --param-dtype bfloat16 --remat --steps 3
fi
