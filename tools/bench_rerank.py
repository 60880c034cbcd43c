"""PE-Rank rerank speed: the JAX fast paths vs the HF-torch reference algorithm, same weights.

    python tools/bench_rerank.py --queries 4                 # SmolLM2-135M + all-MiniLM-L6-v2, CPU, fp32
    python tools/bench_rerank.py --queries 8 --sweep 1,2,4,8 # + queries/s against --batch-queries
    python tools/bench_rerank.py --mistral7b-random --dtype bfloat16 --no-torch   # GPU: 7B-shaped random

One run prints one table. Rows:
  (a) JAX, passages encoded on the fly, one query at a time
  (b) JAX, passage vectors from a `perank encode` cache (built here for the candidates), one query at a time
  (c) JAX, `--batch-queries` queries at a time (default 8), vectors from the cache
  (d) the HF-torch reference algorithm, one query at a time, its own encoding
  (e) the text-listwise reranker (perank_jax.evaluate.textlist: the passage TEXTS in a RankGPT-style
      prompt, generation of up to 256 tokens, parsed), JAX, same windows; `--textlist-queries` queries
  (e') HF transformers `generate` on the same text-listwise prompts (top-20 only), with the tokens it
      generated compared to (e)'s (tools/bench_textlist.py `textlist_latency`)
Every JAX row prefills a query's shared prompt prefix once (perank_jax.inference.prefix), so it processes
fewer tokens than (d). Scenarios (DL20 BM25 candidates, `--data`, default
the `requests` of configs/datasets/dl20-candidates.yaml from `perank data fetch --out data/raw`): top-20 in
one window, and top-100 with the paper's sliding window (20, stride 10, bottom up: 9 windows).
Latency covers encoding + projection + decoding (the paper's definition); compilation is
measured apart (a warm-up query per row, and any compile later is subtracted). (c) reranks
whole batches: at least --queries queries, rounded up to a multiple of --batch-queries. The
projector is untrained (random): this measures speed, not quality. The torch path is the
reference algorithm: HF encoder + mean pooling, nn.Sequential projector, HF causal LM with the
vectors at the placeholders (inputs_embeds), KV cache, each step scored as h . e_i over the
unused passages (what installing e_i as extra vocabulary rows computes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def build_smollm2_ranker(tmp: Path, dtype: str):
    from flax import nnx
    from perank_jax.models import build_projector
    from perank_jax.inference import PERanker
    from perank_jax.weights import load_decoder, minilm_dir, save_checkpoint, smollm2_dir
    hf = smollm2_dir()
    dec = load_decoder(hf)
    from perank_jax.models import encoder_preset
    proj = build_projector("mlp2x_gelu", encoder_preset("minilm-l6").hidden_size, dec.config.hidden_size,
                     rngs=nnx.Rngs(0))
    ck = save_checkpoint(tmp / "perank", dec.model, proj, dec.tokenizer, encoder_name=str(minilm_dir()))
    return PERanker.from_pretrained(ck, dtype=dtype), Path(hf)


def build_mistral7b_random(dtype: str, layers: int | None):
    """Mistral-7B-Instruct-v0.2 shapes, random weights made on the device; SmolLM2's tokenizer
    (Mistral's is not available offline) and MiniLM as the encoder."""
    import jax.numpy as jnp
    from flax import nnx
    from perank_jax.models import decoder_preset, encoder_preset, random_decoder
    from perank_jax.weights import load_encoder
    from perank_jax.models import build_projector
    from perank_jax.inference import PERanker
    from perank_jax.models import LoadedDecoder
    from perank_jax.weights import load_decoder, minilm_dir, smollm2_dir
    tok = load_decoder(smollm2_dir()).tokenizer
    dt = jnp.dtype(dtype)
    cfg = decoder_preset("mistral-7b", layers=layers)
    model = random_decoder(cfg, dt)                     # made on the device, never on the host
    dec = LoadedDecoder(model, tok)
    proj = build_projector("mlp2x_gelu", encoder_preset("minilm-l6").hidden_size, cfg.hidden_size, rngs=nnx.Rngs(0),
                     dtype=dt, param_dtype=dt)
    return PERanker(dec, proj, tok, load_encoder(minilm_dir())), None


def reference_window(lm, ids, placeholder_id: int, e) -> list[int]:
    """The reference decoding of one window in HF torch: prompt ids [1, T] with the projected
    vectors e [n, D] at its placeholders (inputs_embeds), KV cache, one forward per emitted
    passage, each step scored as h . e_i (float32) over the unused passages; the ranking."""
    import torch
    ph = ids == placeholder_id
    x = lm.get_input_embeddings()(torch.where(ph, 0, ids))
    x[ph] = e
    out = lm(inputs_embeds=x, use_cache=True, output_hidden_states=True)
    ranking = []
    for _ in range(len(e)):
        scores = (out.hidden_states[-1][0, -1] @ e.T).float()
        if ranking:
            scores[ranking] = float("-inf")
        i = int(torch.argmax(scores))
        ranking.append(i)
        if len(ranking) < len(e):
            out = lm(inputs_embeds=e[i].view(1, 1, -1), past_key_values=out.past_key_values,
                     use_cache=True, output_hidden_states=True)
    return ranking


def reference_rerank(lm, e, prompt_ids, placeholder_id: int, window=None, stride=10):
    """`reference_window` over projected vectors e [N, D], in sliding windows from the bottom up
    (one window without `window`); prompt_ids(n) gives a window's prompt ids [1, T]. Returns
    (order, prompt tokens processed, passages generated)."""
    from perank_jax.listwise import sliding_windows
    order, processed, generated = list(range(len(e))), 0, 0
    for s, t in (sliding_windows(len(e), window, stride) if window else [(0, len(e))]):
        ids = order[s:t]
        prompt = prompt_ids(len(ids))
        perm = reference_window(lm, prompt, placeholder_id, e[ids])
        order[s:t] = [ids[i] for i in perm]
        processed, generated = processed + int(prompt.shape[1]), generated + len(ids)
    return order, processed, generated


class TorchReference:
    """The reference algorithm in HF torch (fp32, CPU)."""

    def __init__(self, hf_dir, ranker):
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
        from perank_jax.weights import minilm_dir
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

    def rerank(self, query, texts, window=None, stride=10):
        r = self.ranker
        with self.torch.no_grad():
            return reference_rerank(self.lm, self.embed(texts),
                                    lambda n: self.torch.tensor([r.tokenized_prompt(query, n).ids.tolist()]),
                                    r.placeholder_id, window, stride)


@dataclass
class Row:
    """One table row: per-query token counts and seconds, and the rankings (to compare rows)."""
    name: str
    processed: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)   # per query (a batch's time split evenly)
    wall: float = 0.0                                     # seconds for all its queries together
    encode: list[float] = field(default_factory=list)
    orders: dict = field(default_factory=dict)            # qid -> ranking
    compile_s: float = 0.0
    note: str = ""               # printed instead of the ranking comparison (rows of another method)

    def queries_per_s(self) -> float:
        return len(self.seconds) / self.wall if self.wall else float("nan")

    def s_per_query(self) -> float:
        return sum(self.seconds) / len(self.seconds) if self.seconds else float("nan")


@dataclass
class Context:
    ranker: object               # PERanker
    hf: Path | None              # the decoder as an HF directory (None for the random 7B)
    dtype: str
    warm: object                 # warm-up request
    requests: list               # the timed requests of the one-query rows
    batch_requests: list         # the timed requests of the batched row
    batch_queries: int
    hf_model: object = None      # the HF torch decoder (the reference's), for (e')
    textlist: object = None      # the JAX decoder (loaded fresh: no PE-Rank tokens), for (e)


def textlist_rows(ctx: Context, depth, window, stride, queries: int, torch: bool) -> list[Row]:
    """(e) the text-listwise reranker in JAX over the same windows; at one window (top-20) also
    (e') HF `generate` on the very same prompts (bench_textlist.textlist_latency: both timed per
    query, one after the other, compilation excluded, generated tokens compared)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_textlist import load_models, textlist_latency
    from perank_jax.evaluate import TextListwiseReranker
    reqs = ctx.requests[:queries]
    if ctx.textlist is None:
        ctx.textlist = load_models(ctx.hf, torch=False, dtype=ctx.dtype)[0]
    if window is None:
        got = textlist_latency(reqs, depth=depth, decoder=ctx.textlist, torch=torch,
                               hf_model=ctx.hf_model if torch else None)
        e, hf = Row("(e) JAX text-listwise"), Row("(e') HF generate, same prompts")
        for g in got:
            e.processed.append(g.prompt_tokens), e.generated.append(g.jax_generated), e.seconds.append(g.jax_s)
            e.compile_s += g.compile_s
            if g.hf_s is not None:
                hf.processed.append(g.prompt_tokens), hf.generated.append(g.hf_generated), hf.seconds.append(g.hf_s)
        same = sum(g.first_diff is None for g in got)
        e.note, hf.note = "(another method)", f"generated tokens equal to (e)'s: {same}/{len(got)}"
        e.wall, hf.wall = sum(e.seconds), sum(hf.seconds)
        return [e] + ([hf] if hf.seconds else [])
    r = TextListwiseReranker(ctx.textlist, window=window, stride=stride)
    e = Row("(e) JAX text-listwise")
    t = time.perf_counter()
    r.rerank(ctx.warm.query, [c.text for c in ctx.warm.candidates[:depth]])
    warm_s = time.perf_counter() - t
    for q in reqs:
        t = time.perf_counter()
        order, usage = r.rerank(q.query, [c.text for c in q.candidates[:depth]])
        dt = time.perf_counter() - t
        e.seconds, e.wall = e.seconds + [dt], e.wall + dt
        e.processed.append(int(usage.processed_tokens)), e.generated.append(int(usage.generated_tokens))
    e.note = "(another method)"
    e.compile_s = max(warm_s - min(e.seconds, default=warm_s), 0.0)   # the warm-up's excess (a bound)
    return [e]


def build_cache(ranker, requests, out: Path):
    """A `perank encode` cache of every candidate of `requests` (docid -> the request's text)."""
    from perank_jax.data import build_embedding_cache
    docs = {c.docid: c.text for r in requests for c in r.candidates}
    corpus = out.parent / "candidates.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in docs.items()))
    t = time.perf_counter()
    build_embedding_cache(ranker.encoder, corpus, out, progress=False)
    return time.perf_counter() - t, len(docs)


def jax_row(name, ctx: Context, reqs, depth, window, stride, *, cache, batch: int) -> Row:
    """Rerank `reqs` with PERanker, `batch` queries per call, after an untimed warm-up call."""
    r = ctx.ranker
    r.use_embeddings(cache)
    row = Row(name)

    def call(chunk):
        orders = r.rerank_batch([q.query for q in chunk], [[c.text for c in q.candidates[:depth]] for q in chunk],
                                window=window, stride=stride,
                                docids=[[c.docid for c in q.candidates[:depth]] for q in chunk])
        return orders, r.last_stats
    _, stats = call([ctx.warm] * batch)
    row.compile_s = sum(s.compile_s for s in stats)
    for lo in range(0, len(reqs), batch):
        chunk = reqs[lo:lo + batch]
        orders, stats = call(chunk)
        for q, o, s in zip(chunk, orders, stats):
            row.orders[q.qid] = o
            row.processed.append(s.processed_tokens)
            row.generated.append(s.generated_tokens)
            row.seconds.append(s.latency_s)
            row.encode.append(s.encode_s)
        row.wall += sum(s.latency_s for s in stats)
        row.compile_s += sum(s.compile_s for s in stats)
    r.use_embeddings(None)
    return row


def torch_row(name, ctx: Context, ref, depth, window, stride) -> Row:
    row = Row(name)
    ref.rerank(ctx.warm.query, [c.text for c in ctx.warm.candidates[:depth]], window=window, stride=stride)
    for q in ctx.requests:
        t = time.perf_counter()
        order, p, g = ref.rerank(q.query, [c.text for c in q.candidates[:depth]], window=window, stride=stride)
        dt = time.perf_counter() - t
        row.orders[q.qid], row.seconds, row.wall = order, row.seconds + [dt], row.wall + dt
        row.processed.append(p)
        row.generated.append(g)
    return row


def print_table(scenarios, ref_name="(d)"):
    print("| scenario | row | processed tok/query | generated tok/query | s/query | queries/s | "
          "speed-up vs (d) | encode s/query | same ranking as (a) / (d) |")
    print("|---|---|---|---|---|---|---|---|---|")
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    for scen, rows in scenarios:
        ref = next((r for r in rows if r.name.startswith(ref_name)), None)
        a = rows[0]
        for r in rows:
            same = []
            for other in (a, ref):
                shared = [q for q in r.orders if other is not None and q in other.orders]
                same.append(f"{sum(r.orders[q] == other.orders[q] for q in shared)}/{len(shared)}" if shared else "-")
            speed = ref.s_per_query() / r.s_per_query() if ref is not None else float("nan")
            enc = f"{mean(r.encode):.3f}" if r.encode else "-"
            print(f"| {scen} | {r.name} | {mean(r.processed):.0f} | {mean(r.generated):.0f} | {r.s_per_query():.3f} | "
                  f"{r.queries_per_s():.3f} | {speed:.2f}x | {enc} | {r.note or ' / '.join(same)} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=4, help="timed queries per one-query row")
    ap.add_argument("--batch-queries", type=int, default=8, help="queries per call in row (c)")
    ap.add_argument("--sweep", default="", help="also print queries/s against batch sizes, e.g. 1,2,4,8 (the same "
                                                "max(sweep) queries, precomputed embeddings)")
    ap.add_argument("--sweep-depth", type=int, default=100, choices=(20, 100), help="the sweep's scenario")
    ap.add_argument("--no-table", action="store_true", help="only the sweep")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--mistral7b-random", action="store_true")
    ap.add_argument("--layers", type=int, default=None, help="override the 7B layer count (smoke runs)")
    ap.add_argument("--data", default=None, help="rank_llm request JSONL (default: DL20 BM25 candidates)")
    ap.add_argument("--textlist-queries", type=int, default=2,
                    help="queries for rows (e)/(e'), text-listwise (0: skip; ~12 s per window on 2 CPU cores)")
    a = ap.parse_args(argv)

    import jax
    from perank_jax.data import read_requests
    sweep = [int(x) for x in a.sweep.split(",") if x.strip()]
    n_batch = -(-a.queries // a.batch_queries) * a.batch_queries
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_textlist import default_data          # the DL20 candidates, as configs/datasets names them
    requests = read_requests(a.data or default_data())[: 1 + max(a.queries, n_batch, *sweep, 0)]   # [0]: the warm-up query
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
        cache_s, n_docs = build_cache(ranker, requests, Path(tmp) / "cache")
        from perank_jax.data import load_embedding_cache
        cache = load_embedding_cache(Path(tmp) / "cache")
        ctx = Context(ranker, hf, a.dtype, requests[0], requests[1:1 + a.queries], requests[1:1 + n_batch],
                      a.batch_queries, hf_model=None if ref is None else ref.lm)
        scenarios, compiles = [], []
        for scen, depth, window in (() if a.no_table else (("top-20, 1 window", 20, None),
                                                           ("top-100, window 20/10", 100, 20))):
            rows = [jax_row("(a) JAX, encode on the fly", ctx, ctx.requests, depth, window, 10, cache=None, batch=1),
                    jax_row("(b) JAX, precomputed embeddings", ctx, ctx.requests, depth, window, 10, cache=cache,
                            batch=1),
                    jax_row(f"(c) JAX, --batch-queries {a.batch_queries}, precomputed", ctx, ctx.batch_requests,
                            depth, window, 10, cache=cache, batch=a.batch_queries)]
            if ref is not None:
                rows.append(torch_row("(d) HF-torch reference", ctx, ref, depth, window, 10))
            if a.textlist_queries and hf is not None:
                rows += textlist_rows(ctx, depth, window, 10, a.textlist_queries, torch=ref is not None)
            compiles.append(f"{scen}: " + (", ".join(f"{r.name[:3]} {r.compile_s:.1f} s" for r in rows if r.compile_s)
                                           or "none (buckets already compiled)"))
            scenarios.append((scen, rows))
        print(f"# {a.queries} DL20 queries per one-query row, {n_batch} in (c); warm-up query excluded; mean per "
              f"query; encoder bucket warm-up {enc_compile:.1f} s; cache of {n_docs} passages built in {cache_s:.1f} s "
              f"(not counted); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        if scenarios:
            print(f"# JAX compile (excluded from latency): {'; '.join(compiles)}")
            print_table(scenarios)
        if sweep:
            print(f"\n| --batch-queries | top-{a.sweep_depth} queries/s (precomputed embeddings) | s/query |\n|---|---|---|")
            for b in sweep:            # the same max(sweep) queries, b per call
                row = jax_row(f"batch {b}", ctx, requests[1:1 + max(sweep)], a.sweep_depth,
                              20 if a.sweep_depth > 20 else None, 10, cache=cache, batch=b)
                print(f"| {b} | {row.queries_per_s():.2f} | {row.s_per_query():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
