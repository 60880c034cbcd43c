"""GPU preset, torch side: the HF-torch reference algorithm at the shapes of tools/bench_gpu.py, as JSON.

    python tools/bench_gpu_torch.py --out torch.json            # Mistral-7B shape, bf16, on cuda
    python tools/bench_gpu_torch.py --smoke --out torch.json    # tiny model on CPU: checks the script

Run in its own process before tools/bench_gpu.py (which reads the JSON with --torch-json and prints
the two side by side), so torch and XLA never share the accelerator's memory. Same prompts (the
synthetic tokenizer of bench_gpu.py, the paper's template), same deterministic random 768-d vectors,
same windows; random weights of the same shapes (speed does not depend on the values). The
reference algorithm is tools/bench_rerank.py's (`reference_rerank`): a random-init HF
MistralForCausalLM with the projected vectors at the placeholders (inputs_embeds), KV cache, one
forward per generated passage, each step scored as h . e_i over the unused passages; one query at a
time, one window at a time, no prefix sharing (the reference code has neither batching nor a
shared prefix). Processed tokens count the prompts, as the JAX rows do.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")      # jax is imported only for the prompt helpers

import numpy as np


def build(smoke: bool, device: str):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from bench_gpu import encoder_dim
    from perank_jax.models import decoder_preset
    cfg = MistralConfig.from_dict(decoder_preset("tiny-mistral" if smoke else "mistral-7b").to_hf())
    dt = torch.float32 if smoke else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):                       # initialised on the device, never on the host
        old = torch.get_default_dtype()
        torch.set_default_dtype(dt)
        try:
            lm = MistralForCausalLM(cfg).eval()
            d = cfg.hidden_size
            proj = torch.nn.Sequential(torch.nn.Linear(encoder_dim(), d), torch.nn.GELU(), torch.nn.Linear(d, d)).eval()
        finally:
            torch.set_default_dtype(old)
    return lm, proj, dt


def rerank(lm, proj, tok, placeholder_id, vectors, query, texts, win, dt, device):
    """One query by the reference algorithm: (order, prompt tokens processed, passages generated)."""
    import torch

    from bench_rerank import reference_rerank
    from perank_jax.listwise import build_prompt, tokenize_prompt

    def prompt_ids(n):
        p = tokenize_prompt(tok, build_prompt(tok, query, n), n, placeholder_id)
        return torch.from_numpy(p.ids.astype(np.int64)).to(device).view(1, -1)
    e = proj(torch.from_numpy(vectors.encode(texts)).to(device=device, dtype=dt))
    return reference_rerank(lm, e, prompt_ids, placeholder_id, win, 10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU (checks the script)")
    ap.add_argument("--queries", type=int, default=4, help="timed queries per row (after one warm-up query)")
    ap.add_argument("--out", required=True, help="JSON file for tools/bench_gpu.py --torch-json")
    a = ap.parse_args(argv)
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))      # the sibling tools, as bench_rerank does
    from bench_gpu import RandomVectors, encoder_dim, synthetic_tokenizer
    device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    t0 = time.perf_counter()
    lm, proj, dt = build(a.smoke, device)
    from perank_jax.listwise import add_special_tokens
    tok = synthetic_tokenizer()          # it already holds the PE-Rank tokens: this only looks them up
    placeholder_id, _ = add_special_tokens(tok)
    rows = []
    with torch.no_grad():
        for depth, win in ((20, None), (100, 20)):
            qs = [f"what is the query number {q} about" for q in range(a.queries + 1)]
            lists = [[f"passage {q} {i}" for i in range(depth)] for q in range(a.queries + 1)]
            vectors = RandomVectors(encoder_dim())
            rerank(lm, proj, tok, placeholder_id, vectors, qs[0], lists[0], win, dt, device)  # warm-up
            secs, proc, gen = [], [], []
            for q, texts in zip(qs[1:], lists[1:]):
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                _, n, g = rerank(lm, proj, tok, placeholder_id, vectors, q, texts, win, dt, device)
                if device == "cuda":
                    torch.cuda.synchronize()
                secs.append(time.perf_counter() - t)
                proc.append(n)
                gen.append(g)
            rows.append({"depth": depth, "window": win, "s_query": statistics.mean(secs),
                         "processed": statistics.mean(proc), "generated": statistics.mean(gen)})
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "dtype": str(dt), "built_and_run_s": time.perf_counter() - t0, "rows": rows}
    with open(a.out, "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
