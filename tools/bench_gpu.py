"""GPU preset: PE-Rank at Mistral-7B shape (random weights, bf16) on one accelerator, one table.

    python tools/bench_gpu.py             # Mistral-7B-Instruct-v0.2 shapes, bfloat16 (run by tools/bench_gpu.sh)
    python tools/bench_gpu.py --smoke     # a 2-layer, 256-wide model on CPU: checks the script end to end

Self-contained, so it runs on a bare accelerator machine (jax, flax, transformers; nothing
downloaded, no packaged weights, no retrieval data): a synthetic word-level tokenizer with
Mistral's chat template and the PE-Rank special tokens, random decoder and projector weights made
on the device, and deterministic random 768-d passage vectors standing in for a precomputed
embedding cache (so encoding costs nothing, as with `perank encode` done offline). Speed does not
depend on the values. Rows:
  - decode step (one token, batch 1 and 8, KV cache of 512) next to its bandwidth roofline: weight
    bytes / the device's HBM bandwidth (a table of published figures, by device kind);
  - prefill of 2,048 tokens (tokens/s);
  - PE-Rank reranking: top-20 in one window and top-100 with sliding windows 20/10, one query at a
    time and 8 queries batched (s/query, queries/s, processed and generated tokens per query).
Compilation is excluded (each shape is run once before timing) and reported in its own column.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# published peak HBM bandwidth (bytes/s) by device kind substring; the roofline uses the first match
HBM_BANDWIDTH = [("H200", 4.8e12), ("H100", 3.35e12), ("H800", 3.35e12), ("A100", 2.0e12), ("L40", 0.864e12),
                 ("L4", 0.3e12), ("A10", 0.6e12), ("V100", 0.9e12), ("TPU v5p", 2.765e12), ("TPU v5", 0.819e12),
                 ("TPU v4", 1.2e12), ("TPU v6", 1.64e12)]
WORDS = ("I will provide you with {num} passages , each with a special token representing the passage "
         "enclosed in [ ] . Rank the passages based on their relevance to the search query : "
         "Search Query Passage Query Rank Answer only with the ranking results , do not say any word or "
         "explain . the a of to in is what how why when does do where who which").split()
PRESET, SMOKE_PRESET, ENCODER = "mistral-7b", "tiny-mistral", "jina-v2-base"     # configs/models/*.yaml


def encoder_dim() -> int:
    """The width of the paper's encoder (jina-embeddings-v2-base): the stand-in passage vectors' size."""
    from perank_jax.models import encoder_preset
    return encoder_preset(ENCODER).hidden_size


def synthetic_tokenizer():
    """A word-level HF tokenizer (unknown words -> <unk>) with Mistral's chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from perank_jax.models import load_preset
    from perank_jax.listwise import add_special_tokens
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS) | {str(i) for i in range(200)}))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                pad_token="<unk>")
    t.add_special_tokens({"additional_special_tokens": ["[INST]", "[/INST]"]})
    t.chat_template = load_preset(PRESET).chat_template
    add_special_tokens(t)
    return t


class RandomVectors:
    """Deterministic random unit vectors per text: a stand-in for a precomputed embedding cache."""

    def __init__(self, dim: int):
        self.dim = dim

    def encode(self, texts, batch_size: int = 32):
        out = np.empty((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            v = np.random.default_rng(abs(hash(t)) % (1 << 32)).normal(size=self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


def build(smoke: bool, dtype: str, unroll: bool = False):
    from flax import nnx

    from perank_jax.models import build_projector, decoder_preset, LoadedDecoder, random_decoder
    cfg = decoder_preset(SMOKE_PRESET if smoke else PRESET)
    dt = jnp.dtype(dtype)
    model = random_decoder(cfg, dt, unroll=unroll)      # made on the device, never on the host
    proj = build_projector("mlp2x_gelu", encoder_dim(), cfg.hidden_size, rngs=nnx.Rngs(0), dtype=dt, param_dtype=dt)
    return LoadedDecoder(model), proj, cfg


def timed(fn, repeats: int) -> tuple[float, float]:
    """(compile-and-first-run seconds, median seconds of `repeats` further runs)."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t)
    return first, statistics.median(runs)


def decoder_rows(dec, cfg, repeats: int, prompt: int, weight_bytes: int, bw: float | None):
    """Yield the decode-step rows (batch 1 and 8, beside the roofline) and the prefill row."""
    from flax import nnx

    from perank_jax.models import init_cache
    gd, state = dec.graphdef, dec.state

    @jax.jit
    def step(state, cache, tok, pos):
        m = nnx.merge(gd, state)
        h, cache = m.forward(m.embed(tok), pos, jnp.ones(tok.shape, bool), cache)
        return jnp.argmax(m.head(h), -1).astype(jnp.int32), cache

    for batch in (1, 8):
        cache = init_cache(cfg, batch, 512, dec.model.dtype)
        tok = jnp.zeros((batch, 1), jnp.int32)
        pos = jnp.full((batch, 1), 256, jnp.int32)
        first, t = timed(lambda: step(state, cache, tok, pos), repeats)
        roof = weight_bytes / bw if bw else float("nan")
        yield ({"what": f"decode step, batch {batch}, cache 512", "ms": t * 1e3,
                     "roofline_ms": roof * 1e3, "of_roofline": roof / t if bw else float("nan"),
                     "tokens_s": batch / t, "compile_s": first - t})

    @jax.jit
    def prefill(state, ids):
        m = nnx.merge(gd, state)
        pos = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
        h, _ = m.forward(m.embed(ids), pos, jnp.ones(ids.shape, bool), init_cache(cfg, 1, ids.shape[1], m.dtype))
        return m.head(h[:, -1:])

    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, prompt)), jnp.int32)
    first, t = timed(lambda: prefill(state, ids), repeats)
    yield ({"what": f"prefill {prompt} tokens, batch 1", "ms": t * 1e3, "roofline_ms": float("nan"),
                 "of_roofline": float("nan"), "tokens_s": prompt / t, "compile_s": first - t})


def rerank_rows(dec, proj, queries: int, depths=(20, 100), batches=(1, 8)):
    """Yield one PE-Rank row at a time (printed as it comes, so a run cut short keeps what it measured)."""
    from perank_jax.inference import PERanker
    tok = synthetic_tokenizer()
    for depth, window in ((20, None), (100, 20)):
        if depth not in depths:
            continue
        for batch in batches:
            ranker = PERanker(dec, proj, tok, RandomVectors(encoder_dim()), batch_size=max(16, 2 * batch))
            timed_q = -(-max(queries, batch) // batch) * batch                 # whole batches only
            qs = [f"what is the query number {q} about" for q in range(timed_q + batch)]
            lists = [[f"passage {q} {i}" for i in range(depth)] for q in range(timed_q + batch)]
            ranker.rerank_batch(qs[:batch], lists[:batch], window=window, stride=10)     # compile this shape
            t = time.perf_counter()
            stats = []
            for lo in range(batch, batch + timed_q, batch):
                ranker.rerank_batch(qs[lo:lo + batch], lists[lo:lo + batch], window=window, stride=10)
                stats += ranker.last_stats
            wall = time.perf_counter() - t
            n = len(stats)
            yield ({"what": f"PE-Rank top-{depth} {'window 20/10' if window else 'one window'}, "
                                 f"{batch} quer{'y' if batch == 1 else 'ies'} at once", "depth": depth,
                         "s_query": wall / n, "queries_s": n / wall,
                         "processed": statistics.mean(s.processed_tokens for s in stats),
                         "generated": statistics.mean(s.generated_tokens for s in stats)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model on any device (checks the script)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--queries", type=int, default=8, help="timed queries per PE-Rank row")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--unroll", action="store_true", help="unroll the decoder's layer scan")
    ap.add_argument("--decode-only", action="store_true", help="the decoder table only (no PE-Rank rows)")
    ap.add_argument("--rerank-only", action="store_true", help="the PE-Rank table only (no decoder rows)")
    ap.add_argument("--depths", default="20,100", help="PE-Rank rows to run: 20 (one window), 100 (20/10)")
    ap.add_argument("--batches", default="1,8", help="PE-Rank rows to run: queries reranked at once")
    ap.add_argument("--torch-json", help="tools/bench_gpu_torch.py's output: adds the HF-torch reference "
                                         "and the speed-up over it to the PE-Rank table")
    a = ap.parse_args(argv)
    ref = None
    if a.torch_json:
        with open(a.torch_json) as f:
            ref = json.load(f)
    t0 = time.perf_counter()
    dec, proj, cfg = build(a.smoke, a.dtype, a.unroll)
    jax.block_until_ready(dec.state)
    built = time.perf_counter() - t0
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(dec.state))
    kind = jax.devices()[0].device_kind
    bw = next((b for k, b in HBM_BANDWIDTH if k.lower() in kind.lower()), None)
    print(f"\n{'smoke model' if a.smoke else 'Mistral-7B shape (random)'}, {a.dtype}, {cfg.num_layers} layers, "
          f"{weight_bytes / 2**30:.2f} GiB of weights; device {jax.devices()[0].platform}:{kind} "
          f"x{jax.device_count()}; HBM {'%.2f TB/s' % (bw / 1e12) if bw else 'unknown (no roofline)'}; "
          f"jax {jax.__version__}; layer scan {'unrolled' if dec.model.unroll else 'rolled'}; XLA_FLAGS "
          f"{os.environ.get('XLA_FLAGS', '(none)')}; built in {built:.1f} s")
    if not a.rerank_only:
        print("\n| decoder | ms | roofline ms (weights / HBM) | fraction of roofline | tokens/s | compile s |")
        print("|---|---|---|---|---|---|")
        for r in decoder_rows(dec, cfg, a.repeats, 256 if a.smoke else 2048, weight_bytes, bw):
            print(f"| {r['what']} | {r['ms']:.2f} | {r['roofline_ms']:.2f} | {r['of_roofline']:.2f} | "
                  f"{r['tokens_s']:.0f} | {r['compile_s']:.1f} |")
    if a.decode_only:
        return 0
    by_depth = {t["depth"]: t for t in ref["rows"]} if ref else {}
    print("\n| PE-Rank (precomputed embeddings) | s/query | queries/s | processed tokens/query | generated/query |"
          " HF-torch reference s/query (processed, generated) | speed-up over the reference |")
    print("|---|---|---|---|---|---|---|")
    for r in rerank_rows(dec, proj, 4 if a.smoke else a.queries, [int(d) for d in a.depths.split(",")],
                           [int(b) for b in a.batches.split(",")]):
        t = by_depth.get(r["depth"])
        tcol = f"{t['s_query']:.3f} ({t['processed']:.0f}, {t['generated']:.0f})" if t else "not run"
        speedup = f"{t['s_query'] / r['s_query']:.1f}x" if t else "-"
        print(f"| {r['what']} | {r['s_query']:.3f} | {r['queries_s']:.2f} | {r['processed']:.0f} | "
              f"{r['generated']:.0f} | {tcol} | {speedup} |")
    if ref:
        print(f"\nreference: torch {ref['torch']} on {ref['device']}, {ref['dtype']}, one query at a time "
              f"(its own process, random weights of the same shapes)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
