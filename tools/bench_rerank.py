"""PE-Rank rerank latency: JAX (PERanker) vs the HF-torch reference algorithm, same weights.

    python tools/bench_rerank.py --queries 3                 # SmolLM2-135M + all-MiniLM-L6-v2, CPU, fp32
    python tools/bench_rerank.py --mistral7b-random --dtype bfloat16 --no-torch   # GPU: 7B-shaped random

Two scenarios per query (DL20 BM25 candidates, `--data`, default
../shared/data/dl20/bm25.top100.candidates.jsonl; without ../shared see docs/data.md): one window of 20
passages, and 100 candidates reranked with the paper's sliding window (20, stride 10,
bottom up: 9 windows). Per-query latency covers encoding + projection + decoding
(the paper's definition); compilation is measured apart on a warm-up query. The
projector is untrained (random): this measures speed, not quality. The torch path is
the reference algorithm: HF encoder + mean pooling, nn.Sequential projector, HF causal
LM with the vectors at the placeholders (inputs_embeds), KV cache, each step scored as
h . e_i over the unused passages (what installing e_i as extra vocabulary rows computes).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dl20" / "bm25.top100.candidates.jsonl"


def build_smollm2_ranker(tmp: Path, dtype: str):
    from flax import nnx
    from perank_jax.models.projector import Projector
    from perank_jax.ranker import PERanker
    from perank_jax.weights.perank import save_checkpoint
    from perank_jax.weights.decoder import load_decoder
    from perank_jax.weights.gguf import gguf_to_hf_dir
    from perank_jax.weights.packaged import minilm_dir, smollm2_gguf
    hf = gguf_to_hf_dir(smollm2_gguf(), tmp / "smollm2")
    dec = load_decoder(hf)
    proj = Projector("mlp2x_gelu", 384, dec.config.hidden_size, rngs=nnx.Rngs(0))
    ck = save_checkpoint(tmp / "perank", dec.model, proj, dec.tokenizer, encoder_name=str(minilm_dir()))
    return PERanker.from_pretrained(ck, dtype=dtype), Path(hf)


def build_mistral7b_random(dtype: str, layers: int | None):
    """Mistral-7B-Instruct-v0.2 shapes, random weights made on the device; SmolLM2's tokenizer
    (Mistral's is not available offline) and MiniLM as the encoder."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from perank_jax.models.decoder import Decoder, DecoderConfig
    from perank_jax.weights.encoder import load_encoder
    from perank_jax.models.projector import Projector
    from perank_jax.ranker import PERanker
    from perank_jax.models.decoder import LoadedDecoder
    from perank_jax.weights.gguf import GGUFSource
    from perank_jax.weights.packaged import minilm_dir, smollm2_gguf
    tok = GGUFSource(smollm2_gguf()).tokenizer()
    cfg = DecoderConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=layers or 32,
                        num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-5,
                        max_position_embeddings=32768)
    dt = jnp.dtype(dtype)
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), dtype=dt, param_dtype=dt))
    graphdef, abstract = nnx.split(model)

    @jax.jit
    def init(key):
        leaves, treedef = jax.tree.flatten(abstract)
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [(0.02 * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
                                            for k, x in zip(keys, leaves)])
    model = nnx.merge(graphdef, init(jax.random.key(0)))
    dec = LoadedDecoder(model, tok)
    proj = Projector("mlp2x_gelu", 384, 4096, rngs=nnx.Rngs(0), dtype=dt, param_dtype=dt)
    return PERanker(dec, proj, tok, load_encoder(minilm_dir())), None


class TorchReference:
    """The reference algorithm in HF torch (fp32, CPU)."""

    def __init__(self, hf_dir, ranker):
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
        from perank_jax.weights.packaged import minilm_dir
        self.torch = torch
        self.lm = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        self.enc = AutoModel.from_pretrained(str(minilm_dir())).eval()
        self.enc_tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
        t = ranker.projector.export_torch("")
        d_in, d = ranker.projector.in_dim, ranker.projector.out_dim
        self.proj = torch.nn.Sequential(torch.nn.Linear(d_in, d), torch.nn.GELU(), torch.nn.Linear(d, d)).eval()
        self.proj.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in t.items()})
        self.ranker = ranker

    def embed(self, texts):
        torch = self.torch
        b = self.enc_tok(texts, padding="longest", truncation=True, max_length=512, return_tensors="pt")
        h = self.enc(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1)
        return self.proj(torch.nn.functional.normalize(e, dim=-1))

    def window(self, query, e):
        torch = self.torch
        r = self.ranker
        ids = torch.tensor([r.tokenized_prompt(query, len(e)).ids.tolist()])
        ph = ids == r.placeholder_id
        x = self.lm.get_input_embeddings()(torch.where(ph, 0, ids))
        x[ph] = e
        out = self.lm(inputs_embeds=x, use_cache=True, output_hidden_states=True)
        ranking = []
        for _ in range(len(e)):
            scores = out.hidden_states[-1][0, -1] @ e.T
            if ranking:
                scores[ranking] = float("-inf")
            i = int(torch.argmax(scores))
            ranking.append(i)
            if len(ranking) < len(e):
                out = self.lm(inputs_embeds=e[i].view(1, 1, -1), past_key_values=out.past_key_values,
                              use_cache=True, output_hidden_states=True)
        return ranking, int(ids.shape[1]), len(e)

    def rerank(self, query, texts, window=None, stride=10):
        from perank_jax.windows import sliding_windows
        with self.torch.no_grad():
            e = self.embed(texts)
            order = list(range(len(texts)))
            processed = generated = 0
            for s, t in (sliding_windows(len(texts), window, stride) if window else [(0, len(texts))]):
                ids = order[s:t]
                perm, p, g = self.window(query, e[ids])
                order[s:t] = [ids[i] for i in perm]
                processed, generated = processed + p, generated + g
        return order, processed, generated


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--mistral7b-random", action="store_true")
    ap.add_argument("--layers", type=int, default=None, help="override the 7B layer count (smoke runs)")
    ap.add_argument("--data", default=str(DATA))
    a = ap.parse_args(argv)

    import jax
    from perank_jax.data.trec import read_requests
    requests = read_requests(a.data)[: a.queries + 1]      # the first one is the warm-up
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        if a.mistral7b_random:
            ranker, hf = build_mistral7b_random(a.dtype, a.layers)
        else:
            ranker, hf = build_smollm2_ranker(Path(tmp), a.dtype)
        print(f"# device: {jax.devices()[0].device_kind} x{jax.device_count()}; load {time.perf_counter() - t:.1f} s; "
              f"dtype {a.dtype}; {'Mistral-7B-shaped random' if a.mistral7b_random else 'SmolLM2-135M'} "
              f"+ all-MiniLM-L6-v2, untrained mlp2x_gelu projector", flush=True)
        ref = None if (a.no_torch or hf is None) else TorchReference(hf, ranker)
        t = time.perf_counter()   # compile the encoder's length buckets up front (not a per-query cost)
        for b in getattr(ranker.encoder, "buckets", ()):
            ranker.encoder.encode([" ".join(["word"] * max(b - 2, 1))])
            if ref is not None:
                ref.embed([" ".join(["word"] * max(b - 2, 1))])
        enc_compile = time.perf_counter() - t
        rows = []
        for name, depth, window in (("1 window x 20", 20, None), ("100 cands, window 20/10", 100, 20)):
            warm = requests[0]
            t = time.perf_counter()
            ranker.rerank(warm.query, [c.text for c in warm.candidates[:depth]], window=window)
            first_call, compile_s = time.perf_counter() - t, ranker.last_stats[0].compile_s
            if ref is not None:
                ref.rerank(warm.query, [c.text for c in warm.candidates[:depth]], window=window)
            jl, tl, same, stats = [], [], 0, None
            for r in requests[1:]:
                texts = [c.text for c in r.candidates[:depth]]
                order = ranker.rerank(r.query, texts, window=window)
                stats = ranker.last_stats[0]
                jl.append(stats.latency_s)
                if ref is not None:
                    t = time.perf_counter()
                    torder, tp, tg = ref.rerank(r.query, texts, window=window)
                    tl.append(time.perf_counter() - t)
                    same += torder == order
                    assert (tp, tg) == (stats.processed_tokens, stats.generated_tokens), (tp, tg, stats)
            jm = statistics.median(jl)
            tm = statistics.median(tl) if tl else float("nan")
            rows.append((name, stats.processed_tokens, stats.generated_tokens, jm, stats.encode_s, compile_s,
                         first_call, tm, tm / jm if tl else float("nan"), f"{same}/{len(tl)}" if tl else "-"))
        import os
        print(f"# {a.queries} DL20 queries (median per query), warm-up query excluded; encoder bucket "
              f"warm-up {enc_compile:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print("| scenario | processed tok | generated tok | JAX s/query | JAX encode s | JAX compile s | "
              "JAX 1st call s | torch s/query | torch/JAX | same ranking |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.3f} | "
                  f"{r[8]:.2f} | {r[9]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
