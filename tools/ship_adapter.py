"""Copy a trained stage-2 adapter into the package as the shipped default reranker.

    python tools/ship_adapter.py runs/smollm2-minilm-stage2 [--name perank-minilm] [--query-scale 3000]
                                 [--query-feedback W T] [--dest DIR]

Copies RUN/adapter/{config.json,adapter.safetensors} to the shipped reranker NAME's folder,
perank_jax/shipped/<encoder>/ (weights.packaged.SHIPPED_RERANKERS; with --query-scale,
config.json's inference `query_scale` replaced: the factor on the query token, chosen on validation
queries; see MODEL_CARD.md; with --query-feedback, the candidate-aware query vector's weight and
temperature, perank_jax.listwise.feedback), with the run's
metrics.jsonl and metrics.png (as training_metrics.jsonl / training_loss.png), then reranks the
packaged example set with it and records each query's ranking (example_rankings.json), which
tests/test_shipped_model.py checks. MODEL_CARD.md there is written by hand. Which shipped reranker
is the default is weights.packaged.DEFAULT_RERANKER.
Everything is first assembled and checked (loaded, example set reranked) in a temporary folder
next to the destination; only then do the files replace the shipped ones, so a failure leaves the
shipped model as it was. --dest ships elsewhere (default: NAME's folder).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from perank_jax.cli import perank_flag
from perank_jax.listwise import FEEDBACK_KEYS, check_feedback
from perank_jax.weights import DEFAULT_RERANKER, SHIPPED_RERANKERS, PERankConfig, shipped_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a stage-2 output_dir with adapter/ (a LoRA run)")
    ap.add_argument("--query-scale", type=perank_flag("query_scale", float), default=None,
                    help="replace the adapter's query_scale (inference only; default: as trained)")
    ap.add_argument("--query-feedback", type=float, nargs=2, default=None, metavar=("W", "T"),
                    help="set the candidate-aware query vector's weight and temperature (inference only)")
    ap.add_argument("--name", choices=sorted(SHIPPED_RERANKERS), default=DEFAULT_RERANKER,
                    help="the shipped reranker to replace (`packaged:NAME`; default: %(default)s)")
    ap.add_argument("--dest", type=Path, default=None, help="where to ship (default: NAME's folder in the package)")
    a = ap.parse_args(argv)
    a.dest = a.dest or shipped_dir(a.name, must_exist=False)
    try:      # the rules are PERankConfig's (query_scale, by its flag type) and perank_jax.listwise.feedback's
        if a.query_feedback is not None:
            a.query_feedback = check_feedback(*a.query_feedback)
    except ValueError as e:
        ap.error(str(e))
    run = Path(a.run)
    files = {run / "adapter" / "config.json": "config.json", run / "adapter" / "adapter.safetensors": "adapter.safetensors",
             run / "metrics.jsonl": "training_metrics.jsonl", run / "metrics.png": "training_loss.png"}
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"error: {missing[0]}: not found (train with configs/smollm2-minilm.stage2.yaml first)", file=sys.stderr)
        return 2
    a.dest.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".ship-", dir=a.dest.parent))   # same file system: os.replace
    try:
        for src, name in files.items():
            shutil.copyfile(src, stage / name)
        changes = {} if a.query_scale is None else {"query_scale": a.query_scale}
        changes.update(zip(FEEDBACK_KEYS, a.query_feedback or ()))
        PERankConfig.read(stage).replace("--query-scale / --query-feedback", **changes).write(stage)
        try:
            rankings = example_rankings(stage)
        except Exception as e:           # the CLI boundary: one line, and the shipped model untouched
            print(f"error: {run / 'adapter'}: does not load and rank as a PE-Rank adapter "
                  f"({type(e).__name__}: {e}); {a.dest} was not changed", file=sys.stderr)
            return 2
        (stage / "example_rankings.json").write_text(json.dumps(rankings, indent=1) + "\n")
        for f in sorted(stage.iterdir()):
            os.replace(f, a.dest / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    size = sum(p.stat().st_size for p in a.dest.iterdir() if p.is_file())
    print(f"shipped {run} -> {a.dest} ({size / 2**20:.1f} MB); example rankings recorded")
    return 0


def example_rankings(model_dir: Path) -> dict[str, list[str]]:
    """The packaged example set reranked by the model in model_dir: {qid: docids, best first}."""
    from perank_jax import PERanker
    from perank_jax.cli import EXAMPLE_SET
    from perank_jax.data import read_requests
    ranker = PERanker.from_pretrained(model_dir)
    reqs = read_requests(EXAMPLE_SET)
    orders = ranker.rerank_batch([r.query for r in reqs], [[c.text for c in r.candidates] for r in reqs],
                                 window=20, mode=ranker.config.default_mode)
    return {r.qid: [r.candidates[i].docid for i in o] for r, o in zip(reqs, orders)}


if __name__ == "__main__":
    sys.exit(main())
