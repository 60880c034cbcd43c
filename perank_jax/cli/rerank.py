"""`perank encode` and `perank rerank`: embedding caches and PE-Rank reranking of runs and request files."""
from __future__ import annotations

from pathlib import Path

from perank_jax.cli.args import (NONNEGATIVE, POSITIVE, add_distributed, flag_type, mesh_shape, number, perank_flag,
                                 sharding_rules, start_distributed, warn, warn_cut)
from perank_jax.core.constants import COMPUTE_DTYPES, DECODE_MODES, DTYPES, ENCODER_MAX_LENGTH
from perank_jax.core.outputs import check_outputs
from perank_jax.listwise.windows import STRIDE, TOP_K, WINDOW, check_windows


# --- encode (issue: dense encoders) ---------------------------------------------------
def add_encode(sub):
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
    p.add_argument("--max-length", type=perank_flag("encoder_max_length", int), default=None,
                   help=f"plain --encoder only: encoder tokens per passage (default {ENCODER_MAX_LENGTH}, the paper's)")
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
        from perank_jax.inference.passage_vectors import cache_encoder
        check_outputs(dirs=[a.out])
        start_distributed(a)
        encoder = cache_encoder(a.model, a.encoder, max_length=a.max_length, pooling=a.pooling,
                                normalize=False if a.no_normalize else None, dtype=a.dtype)
        out = build_embedding_cache(encoder, a.corpus, a.out, batch_size=a.batch_size, chunk_size=a.chunk_size,
                                    title_format=a.title_format == "beir", progress=not a.quiet)
        print(f"wrote {out}")
    p.set_defaults(func=run)


EXAMPLE_SET = Path(__file__).resolve().parent.parent / "examples" / "example.jsonl"


# --- rerank (issue: PE-Rank inference) --------------------------------------------------
def add_rerank(sub):
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
    p.add_argument("--depth", type=POSITIVE, default=100, help="candidates per query from the run (default %(default)s)")
    p.add_argument("--out", help="output: TREC run, or rank_llm JSONL when it ends in .jsonl "
                                 "(default: print the ranked lists)")
    p.add_argument("--show", type=NONNEGATIVE, default=5, help="passages printed per query without --out (default %(default)s)")
    p.add_argument("--stats", help="per-query JSONL sidecar (default: OUT.stats.jsonl)")
    p.add_argument("--window", type=flag_type(WINDOW), default=WINDOW.default,
                   help="sliding window size; 0 = one window (default %(default)s)")
    p.add_argument("--stride", type=flag_type(STRIDE), default=STRIDE.default)
    p.add_argument("--top-k", type=flag_type(TOP_K), default=None, help="decode only the top k per window")
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
    p.add_argument("--sharding-rules", type=sharding_rules, default=None, metavar="RULES",
                   help="with --mesh: [[logical axis, mesh axis | null], ...] overriding the default sharding "
                        "rules (YAML text or a file; as a training config's mesh.rules)")
    p.add_argument("--no-share-prefix", action="store_true",
                   help="prefill every window's whole prompt (default: a query's shared prefix once)")
    p.add_argument("--dtype", default="float32", choices=COMPUTE_DTYPES)
    p.add_argument("--query-scale", type=perank_flag("query_scale", float), default=None, metavar="F",
                   help="factor on the query's own embedding (checkpoints with a query token; default: the "
                        "checkpoint's config.json, 3000 for the shipped model)")
    p.add_argument("--query-feedback", type=number(float), nargs=2, default=None, metavar=("W", "T"),
                   help="candidate-aware query vector: weight W >= 0 (0: off) and temperature T > 0 "
                        "(perank_jax.listwise.feedback; default: the checkpoint's config.json)")
    p.add_argument("--tag", default="perank")
    add_distributed(p)
    p.add_argument("--part-queries", type=POSITIVE, default=64,
                   help="with --distributed: queries per resumable part (default %(default)s; docs/scale.md)")

    def run(a):
        from perank_jax.data import trec
        from perank_jax.inference.batch_rerank import rerank_requests
        from perank_jax.inference.ranker import PERanker
        from perank_jax.inference.rerank_parts import rerank_in_parts, write_reranked
        if a.out is None and a.stats:
            raise ValueError("--stats needs --out (without --out the rankings are printed)")
        if a.distributed and a.out is None:
            raise ValueError("--distributed needs --out (process 0 writes it from every process's parts)")
        if a.query_feedback is not None:
            from perank_jax.listwise.feedback import check_feedback
            check_feedback(*a.query_feedback, label="--query-feedback")
        stats_path = Path(a.stats or f"{a.out}.stats.jsonl") if a.out else None
        check_outputs(files=[a.out, stats_path], inputs={"--run": a.run, "--corpus": a.corpus,
                                                         "--queries": a.queries, "--requests": a.requests})
        check_windows(a.window, a.stride, ("--window", "--stride"))
        if a.window and a.stride == a.window:
            warn(f"--stride {a.stride} = --window {a.window}: windows do not overlap, so a passage can "
                 f"only move within its own window")
        start_distributed(a)
        if not (a.requests or a.run or a.corpus or a.queries):
            a.requests = str(EXAMPLE_SET)
            print(f"no input given: reranking the example set {EXAMPLE_SET}")
        cache = None
        if a.embeddings:       # documents are read in the title format the cache was encoded with
            from perank_jax.inference.passage_vectors import cache_and_title_format
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
            from perank_jax.core.sharding import make_mesh
            import jax
            mesh = make_mesh(a.mesh, devices=jax.local_devices())     # each process: its own devices
        ranker = PERanker.from_pretrained(a.model, encoder_path=a.encoder, dtype=a.dtype, mesh=mesh,
                                          embeddings=cache, share_prefix=not a.no_share_prefix,
                                          query_scale=a.query_scale, query_feedback=a.query_feedback,
                                          rules=a.sharding_rules)
        mode = a.mode or ranker.config.default_mode
        kw = dict(window=a.window or None, stride=a.stride, top_k=a.top_k, mode=mode, batch_queries=a.batch_queries,
                  progress=a.out is not None)
        if a.distributed:
            settings = {k: getattr(a, k) for k in ("model", "encoder", "depth", "title_format", "embeddings", "mesh",
                                                   "sharding_rules", "no_share_prefix", "dtype", "query_scale", "query_feedback")}
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


