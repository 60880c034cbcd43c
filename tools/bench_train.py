"""Throughput and peak memory of one stage-2 training step (both views, ListMLE + KL, AdamW).

    python tools/bench_train.py                          # SmolLM2-135M (packaged GGUF) on this CPU
    python tools/bench_train.py --model mistral7b --lora-rank 16 --dtype bfloat16   # on a GPU

The batch has the real stage-2 layout (n placeholders in each prompt, n teacher-forced <RANK>
slots at the end) with random token ids and random 384-d passage embeddings: the step's cost
does not depend on the token values. `--model mistral7b` builds Mistral-7B-Instruct-v0.2's
architecture with random weights (no checkpoint needed). Prints a markdown table row.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.models import build_projector, Decoder, decoder_preset, encoder_preset
from perank_jax.core import make_mesh
from perank_jax.train import train_config, TrainStep



def synthetic_batch(B, n, t_wo, t_w, dim, vocab, seed=0):
    """Stage-2 batch: placeholders spread over the prompt, <RANK> slots at the end of each view."""
    rng = np.random.default_rng(seed)
    out = {"emb": rng.normal(size=(B, n, dim)).astype(np.float32), "valid": np.ones((B, n), bool),
           "ranking": np.stack([rng.permutation(n) for _ in range(B)]).astype(np.int32)}
    for v, T in (("wo", t_wo), ("w", t_w)):
        body = T - n - 2
        out[f"{v}_ids"] = rng.integers(0, vocab, (B, T)).astype(np.int32)
        out[f"{v}_mask"] = np.ones((B, T), bool)
        out[f"{v}_ph_pos"] = np.tile((8 + np.arange(n) * ((body - 16) // n)).astype(np.int32), (B, 1))
        out[f"{v}_rank_pos"] = np.tile((T - 1 - n + np.arange(n)).astype(np.int32), (B, 1))
    return out


def peak_memory_gb() -> tuple[float, str]:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["smollm2", "mistral7b"], default="smollm2")
    p.add_argument("--layers", type=int, default=None, help="override the layer count (mistral7b)")
    p.add_argument("--batch", type=int, default=1, help="global batch (lists per step)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--passages", type=int, default=10)
    p.add_argument("--len-wo", type=int, default=256, help="tokens of the embedding-only prompt")
    p.add_argument("--len-w", type=int, default=1024, help="tokens of the with-content prompt")
    p.add_argument("--dtype", default="float32", help="compute dtype")
    p.add_argument("--param-dtype", default="float32", help="master weights / optimiser state dtype")
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--remat", action="store_true")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one compile step)")
    p.add_argument("--mesh", default="1,1,1", help="data,fsdp,tensor")
    a = p.parse_args(argv)

    cdt, pdt = jnp.dtype(a.dtype), jnp.dtype(a.param_dtype)
    mesh = make_mesh(tuple(int(x) for x in a.mesh.split(",")))
    t = time.time()
    if a.model == "smollm2":
        from perank_jax.weights import load_decoder, smollm2_dir
        decoder = load_decoder(smollm2_dir(), dtype=a.dtype, param_dtype=a.param_dtype, mesh=mesh, remat=a.remat).model
    else:
        cfg = decoder_preset("mistral-7b", layers=a.layers)
        decoder = Decoder(cfg, rngs=nnx.Rngs(0), dtype=cdt, param_dtype=pdt, remat=a.remat, mesh=mesh)
    dcfg = decoder.cfg
    dim = encoder_preset("minilm-l6").hidden_size          # the shipped model's encoder width
    projector = build_projector("mlp2x_gelu", dim, dcfg.hidden_size, rngs=nnx.Rngs(0), dtype=cdt, param_dtype=pdt)
    load_s = time.time() - t
    cfg = train_config({"stage": 2, "global_batch": a.batch, "grad_accum": a.grad_accum, "remat": a.remat,
                        "compute_dtype": a.dtype, "param_dtype": a.param_dtype, "lora": {"rank": a.lora_rank},
                        "data": {"max_passages": a.passages, "max_len": max(a.len_wo, a.len_w),
                                 "buckets": [max(a.len_wo, a.len_w)]},
                        "optim": {"lr": 2e-5, "max_steps": 1000}})
    ts = TrainStep(cfg, decoder, projector, mesh, total_steps=1000)
    del decoder
    state = ts.init_state()
    batch = ts.global_batch(synthetic_batch(a.batch, a.passages, a.len_wo, a.len_w, dim, dcfg.vocab_size))
    t = time.time()
    state, m = ts.step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.time() - t
    times = []
    for _ in range(a.steps):
        t = time.time()
        state, m = ts.step(state, batch)
        jax.block_until_ready(m)
        times.append(time.time() - t)
    step_s = float(np.median(times))
    tokens = a.batch * (a.len_wo + a.len_w)
    mem, kind = peak_memory_gb()
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    dev = jax.devices()[0]
    print(f"| model | device | batch x (len_wo + len_w) | n | compute/params | LoRA r | trainable params | "
          f"load s | first step (compile) s | step s (median of {a.steps}) | tokens/s | {kind} GiB | loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.model}{'' if not a.layers else f' ({a.layers} layers)'} | {dev.platform}:{dev.device_kind} x{jax.device_count()} "
          f"| {a.batch} x ({a.len_wo} + {a.len_w}) | {a.passages} | {a.dtype}/{a.param_dtype} | {a.lora_rank} "
          f"| {n_params / 1e6:.1f}M | {load_s:.1f} | {compile_s:.1f} | {step_s:.2f} | {tokens / step_s:.0f} "
          f"| {mem:.2f} | {float(m['loss']):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
