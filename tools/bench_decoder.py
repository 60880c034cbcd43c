"""Decoder latency: prefill (batch x prompt length) and per-token cached decode, JAX vs torch.

    python tools/bench_decoder.py                        # SmolLM2-135M (packaged GGUF), fp32, CPU
    python tools/bench_decoder.py --model DIR --dtype bfloat16 --no-torch
    python tools/bench_decoder.py --mistral7b-random --dtype bfloat16 --no-torch   # GPU shape check

Compile time is reported apart; latencies are medians over --repeats runs after a warm-up.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _jax_fns(dec, batch, prompt, steps):
    gd = dec.graphdef
    cfg = dec.config

    @jax.jit
    def prefill(state, ids):
        m = nnx.merge(gd, state)
        from perank_jax.models import init_cache
        cache = init_cache(cfg, ids.shape[0], prompt + steps, m.dtype)
        pos = jnp.broadcast_to(jnp.arange(prompt, dtype=jnp.int32), ids.shape)
        h, cache = m.forward(m.embed(ids), pos, None, cache)
        return m.head(h[:, -1:]), cache

    @jax.jit
    def decode(state, tok, cache):
        m = nnx.merge(gd, state)

        def step(carry, t):
            tok, cache = carry
            pos = jnp.full((tok.shape[0], 1), prompt, jnp.int32) + t
            h, cache = m.forward(m.embed(tok), pos, None, cache)
            nxt = jnp.argmax(m.head(h), -1).astype(jnp.int32)
            return (nxt, cache), nxt[:, 0]

        (_, cache), toks = jax.lax.scan(step, (tok, cache), jnp.arange(steps))
        return toks

    return prefill, decode


def bench_jax(dec, batch, prompt, steps, repeats):
    ids = jnp.asarray(np.random.RandomState(0).randint(0, dec.config.vocab_size, (batch, prompt)), jnp.int32)
    prefill, decode = _jax_fns(dec, batch, prompt, steps)
    t0 = time.perf_counter()
    logits, cache = jax.block_until_ready(prefill(dec.state, ids))
    tok = jnp.argmax(logits, -1).astype(jnp.int32)
    jax.block_until_ready(decode(dec.state, tok, cache))
    compile_s = time.perf_counter() - t0
    pre = _median_time(lambda: jax.block_until_ready(prefill(dec.state, ids)), repeats)
    dec_t = _median_time(lambda: jax.block_until_ready(decode(dec.state, tok, cache)), repeats)
    return pre, dec_t / steps, compile_s


def bench_torch(path, batch, prompt, steps, repeats, dtype):
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()
    ids = torch.tensor(np.random.RandomState(0).randint(0, m.config.vocab_size, (batch, prompt)))

    def prefill():
        with torch.no_grad():
            return m(input_ids=ids, use_cache=True)

    def decode():
        with torch.no_grad():
            out = m(input_ids=ids, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(steps):
                out = m(input_ids=tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            return time.perf_counter() - t0

    prefill()
    pre = _median_time(prefill, repeats)
    per_tok = statistics.median(decode() for _ in range(repeats)) / steps
    return pre, per_tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF dir or .gguf (default: packaged SmolLM2-135M-Instruct)")
    ap.add_argument("--mistral7b-random", action="store_true", help="random Mistral-7B-shaped weights")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()

    from perank_jax.models import decoder_preset, LoadedDecoder, random_decoder
    from perank_jax.weights import load_decoder
    if a.mistral7b_random:
        model = random_decoder(decoder_preset("mistral-7b"), a.dtype)      # made on the device
        dec, name, torch_path = LoadedDecoder(model), "Mistral-7B (random)", None
    else:
        path = a.model
        if path is None:
            from perank_jax.weights import smollm2_dir
            path = smollm2_dir()
        dec, name, torch_path = load_decoder(path, dtype=a.dtype), str(a.model or "SmolLM2-135M-Instruct"), path

    jpre, jtok, jcomp = bench_jax(dec, a.batch, a.prompt, a.steps, a.repeats)
    rows = [("jax", jpre, jtok, jcomp)]
    if not a.no_torch and torch_path is not None:
        tpre, ttok = bench_torch(torch_path, a.batch, a.prompt, a.steps, a.repeats, a.dtype)
        rows.append(("torch", tpre, ttok, float("nan")))
    print(f"\n{name}  dtype={a.dtype}  batch={a.batch}  prompt={a.prompt}  decode steps={a.steps}  "
          f"device={jax.devices()[0].device_kind}")
    print("| impl | prefill ms | decode ms/token | compile s |")
    print("|---|---|---|---|")
    for impl, pre, tok, comp in rows:
        print(f"| {impl} | {pre * 1e3:.1f} | {tok * 1e3:.2f} | {comp:.1f} |")
    if len(rows) == 2:
        print(f"| torch/jax ratio | {rows[1][1] / jpre:.2f}x | {rows[1][2] / jtok:.2f}x | |")


if __name__ == "__main__":
    main()
