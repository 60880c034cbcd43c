"""Copy a trained stage-2 adapter into the package as the shipped default reranker.

    python tools/ship_adapter.py runs/smollm2-minilm-stage2

Copies RUN/adapter/{config.json,adapter.safetensors} to perank_jax/shipped/, with the run's
metrics.jsonl and metrics.png (as training_metrics.jsonl / training_loss.png), then reranks the
packaged example set with it and records each query's ranking (example_rankings.json), which
tests/test_shipped_model.py checks. MODEL_CARD.md there is written by hand.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "perank_jax" / "shipped"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    run = Path(argv[0])
    files = {run / "adapter" / "config.json": "config.json", run / "adapter" / "adapter.safetensors": "adapter.safetensors",
             run / "metrics.jsonl": "training_metrics.jsonl", run / "metrics.png": "training_loss.png"}
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"error: {missing[0]}: not found (train with configs/smollm2-minilm.stage2.yaml first)", file=sys.stderr)
        return 2
    SHIPPED.mkdir(exist_ok=True)
    for src, name in files.items():
        shutil.copyfile(src, SHIPPED / name)
    from perank_jax import PERanker
    from perank_jax.cli import EXAMPLE_SET
    from perank_jax.data.trec import read_requests
    ranker = PERanker.from_pretrained(SHIPPED)
    reqs = read_requests(EXAMPLE_SET)
    orders = ranker.rerank_batch([r.query for r in reqs], [[c.text for c in r.candidates] for r in reqs],
                                 window=20, mode=ranker.config.get("default_mode", "decode"))
    rankings = {r.qid: [r.candidates[i].docid for i in o] for r, o in zip(reqs, orders)}
    (SHIPPED / "example_rankings.json").write_text(json.dumps(rankings, indent=1) + "\n")
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    print(f"shipped {run} -> {SHIPPED} ({size / 2**20:.1f} MB); example rankings recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
