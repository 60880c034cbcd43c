"""Encoder throughput: passages/s of the JAX encoder vs HF transformers (torch) in one run.

    python tools/bench_encoder.py [--passages 128] [--batch-size 32] [--lengths 128 512]
                                  [--models minilm mpnet] [--corpus data/raw/scifact/corpus.jsonl]

Passages are the first N documents of a BEIR corpus ("Title: ... Content: ..."), truncated at
each max length. Both sides tokenise, sort by length, batch, run the model, mean-pool and
L2-normalise; both get one untimed warm-up pass over the same passages (JAX compiles its
length buckets there), then the best of `--repeats` timed passes is reported. The last column
is the smallest cosine between the two sides' embeddings (a correctness check).
The default --corpus is data/raw/scifact/corpus.jsonl (`perank data fetch --out data/raw`, docs/data.md).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "data" / "raw" / "scifact" / "corpus.jsonl"


def torch_encoder(d, max_length, batch_size):
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModel.from_pretrained(str(d)).eval()

    def encode(texts):
        lengths = [len(x) for x in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                rows = order[s: s + batch_size]
                b = tok([texts[r] for r in rows], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
                h = model(**b).last_hidden_state
                m = b["attention_mask"][..., None].float()
                e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
                out[rows] = e.numpy()
        return out
    return encode, tok


def timed(fn, texts, repeats):
    fn(texts)                                  # warm-up (JAX: compiles every bucket used)
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(texts)
        best = min(best, time.perf_counter() - t)
    return len(texts) / best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--models", nargs="+", default=["minilm", "mpnet"], choices=["minilm", "mpnet"])
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)

    import jax
    import torch

    import perank_jax
    from perank_jax.data import read_corpus
    from perank_jax.weights import minilm_dir, mpnet_dir

    texts = list(read_corpus(a.corpus, title_format=True).values())[: a.passages]
    dirs = {"minilm": ("all-MiniLM-L6-v2", minilm_dir), "mpnet": ("all-mpnet-base-v2", mpnet_dir)}
    rows = []
    for key in a.models:
        name, locate = dirs[key]
        d = locate()
        for L in a.lengths:
            enc = perank_jax.load_encoder(d, max_length=L)
            jax_ps, ej = timed(lambda t: enc.encode(t, batch_size=a.batch_size), texts, a.repeats)
            tenc, tok = torch_encoder(d, L, a.batch_size)
            torch_ps, et = timed(tenc, texts, a.repeats)
            ntok = np.mean([len(x) for x in tok(texts, truncation=True, max_length=L)["input_ids"]])
            cos = float(((ej * et).sum(1) / np.linalg.norm(ej, axis=1) / np.linalg.norm(et, axis=1)).min())
            rows.append((name, L, ntok, jax_ps, torch_ps, jax_ps / torch_ps, cos, enc.traces.count))
            print(f"  {name} L={L}: jax {jax_ps:.1f}/s torch {torch_ps:.1f}/s", flush=True)

    print(f"\n{a.passages} passages from {Path(a.corpus).parent.name}, batch {a.batch_size}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cpus), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)\n")
    print("| encoder | max len | mean tokens | JAX passages/s | torch passages/s | JAX/torch | min cos | JAX compiles |")
    print("|---|---|---|---|---|---|---|---|")
    for n, L, nt, j, t, r, c, cc in rows:
        print(f"| {n} | {L} | {nt:.0f} | {j:.3g} | {t:.3g} | {r:.2f} | {c:.6f} | {cc} |")


if __name__ == "__main__":
    main()
