"""Export the latest checkpoint of a training run (even one still running) for evaluation.

    python tools/export_checkpoint.py configs/smollm2-minilm.stage2.yaml runs/snap100 [key=value ...]

Writes runs/snap100/export (a PE-Rank checkpoint) and, for LoRA runs, runs/snap100/adapter.
"""
from __future__ import annotations

import sys

from perank_jax.train import export_latest, load_train_config


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cfg = load_train_config(argv[0], argv[2:] + ["progress=false"])
    step, out = export_latest(cfg, argv[1])
    print(f"exported step {step} of {cfg.output_dir} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
