#!/usr/bin/env bash
# Where does a decode step's time go inside the compiled decode loop? (for a session with a lent GPU)
# On one H200 (docs/benchmarks.md) an isolated 7B decode step takes 12.0 ms with the layer scan rolled
# and 6.65 ms unrolled, but a top-20 query spends ~11 ms per step either way inside the decode loop (a
# scan over steps with a lax.cond in each). One guess: XLA runs a while loop's body and a conditional's
# branches without CUDA graphs by default, so every kernel of the step is launched from the host. This
# prints the top-20 one-query row for rolled / unrolled layers, with XLA's
# default command buffers and with WHILE and CONDITIONAL added. About 5 minutes; installs nothing.
#
#   bash tools/bench_gpu_variants.sh            # on the accelerator
#   bash tools/bench_gpu_variants.sh --smoke    # anywhere (CPU): tiny shapes, checks the script
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
py="${PYTHON:-python3}"
if [ -n "${OUT:-}" ]; then exec > >(tee "$OUT/bench_gpu_variants.log") 2>&1; fi
smoke=(); cap=140              # 4 runs: under the device tool's 600 s per command
if [ "${1:-}" = "--smoke" ]; then smoke=(--smoke); cap=600; fi
cb="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
for flags in "" "$cb"; do
  for unroll in "" "--unroll"; do
    label=${unroll:+unrolled}
    echo "== layers ${label:-rolled}, XLA_FLAGS ${flags:-(default)}"
    XLA_FLAGS="$flags" timeout "$cap" "$py" tools/bench_gpu.py "${smoke[@]}" $unroll --rerank-only --depths 20 \
      --batches 1 --queries 8 | grep -E "^\| PE-Rank top"
  done
done
