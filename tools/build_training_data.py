"""Build every training file of the shipped recipe from the retrieval data, with one command.

    python tools/build_training_data.py --data data/raw --out data/

`perank data fetch --out data/raw` downloads and prepares the data folder; docs/data.md gives its layout,
every file name and how to get it. The public sources are TREC DL 2020/2022 passage (topics and
qrels from anserini-tools, BM25 / SPLADE++ runs and passage texts from rank_llm's
history, or `ir_datasets` msmarco-passage/trec-dl-2020 and msmarco-passage-v2/trec-dl-2022
when online), BEIR SciFact, and a DPR-style Wikipedia passage sample.

Writes (atomically):
  stage1.jsonl       reconstruction records (stage 1): passages of wiki, dl20, dl22, scifact
  stage2.jsonl       listwise records (stage 2), candidates in BM25 order (as at inference):
                       dl22: contiguous BM25 top-100 windows and draws from BM25 top-`pool` u
                             SPLADE++ top-`pool` (inside BM25's top 100); teacher = SPLADE++'s
                             order (then BM25's for documents SPLADE++ did not retrieve)
                       dl20 `train` half (configs/splits/dl20.json): the same draws, teacher =
                             qrels grade, ties by SPLADE++ rank, then BM25 rank
                       scifact train (optional, --scifact-lists): BM25 top-n, relevant first
  stage2.emb.npz     (with --embed) the frozen encoder's vectors of every text in stage2.jsonl,
                     so training (and its resumes) need not re-encode them
The DL20 `heldout` half is never read here: it is the in-domain evaluation set.
`--drop SOURCE` leaves a source's stage-2 lists out after drawing them, so every list kept is the
one the full build writes (e.g. `--drop dl20-train`: a model for which both DL20 halves are unseen).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from perank_jax.data import DataError, read_corpus, read_qrels, read_queries, read_run
from perank_jax.data import listwise_record, qrels_lists, reconstruction_record, write_records

ROOT = Path(__file__).resolve().parent.parent
SPLIT = ROOT / "configs" / "splits" / "dl20.json"
STAGE2_SOURCES = ("dl22", "dl20-train", "scifact-train")


def read_split(path=SPLIT) -> dict:
    """{"train": [qid...], "heldout": [qid...]} of DL20, disjoint (perank_jax.evaluate.datasets.read_split)."""
    from perank_jax.evaluate import read_split
    split = read_split(path)
    missing = {"train", "heldout"} - set(split)
    if missing:
        raise DataError(f"{path}: not a DL20 split file (no {sorted(missing)})")
    return split


def _rank_of(hits) -> dict[str, int]:
    return {h.docid: i for i, h in enumerate(hits)}


def draws(rng, bm25: list[str], teacher_key, n: int, pool: int, splade: list[str], lists: int, windows: int):
    """`windows` contiguous BM25 windows plus `lists - windows` random draws from the pool;
    each as (docids in BM25 order, teacher ranking as indices)."""
    bm_rank = {d: i for i, d in enumerate(bm25)}
    pool_ids = list(dict.fromkeys(bm25[:pool] + [d for d in splade[:pool] if d in bm_rank]))
    starts = list(range(0, max(len(bm25) - n, 0) + 1, max(n // 2, 1)))
    out = []
    for k in range(lists):
        if k < windows:
            s = int(rng.choice(starts[:max(1, len(starts) * 2 // 3)]))
            ids = bm25[s:s + n]
        else:
            ids = [pool_ids[i] for i in rng.choice(len(pool_ids), size=min(n, len(pool_ids)), replace=False)]
            ids.sort(key=bm_rank.__getitem__)
        order = sorted(range(len(ids)), key=lambda i: teacher_key(ids[i]))
        out.append((ids, order))
    return out


def stage2_records(data: Path, args, split) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(args.seed)
    kw = dict(template=args.template, query_token=args.query_token, content_view=args.content_view)
    recs, counts = [], {}
    sets = [("dl22", data / "dl22", None, "run.bm25.txt", "run.splade_pp_ed.txt", None),
            ("dl20-train", data / "dl20", split["train"], "run.bm25.top100.txt", "run.splade_pp_ed.top100.txt",
             "qrels.txt")]
    for name, d, only, bm_file, sp_file, qrels_file in sets:
        queries = read_queries(d / "queries.tsv")
        bm25, splade = read_run(d / bm_file), read_run(d / sp_file)
        qrels = read_qrels(d / qrels_file) if qrels_file else {}
        corpus = read_corpus(d / "docs.tsv")
        qids = [q for q in bm25 if only is None or q in set(only)]
        if only is not None and set(only) - set(bm25):
            raise DataError(f"{d / bm_file}: split queries missing from the run: {sorted(set(only) - set(bm25))[:5]}")
        before = len(recs)
        for qid in sorted(qids, key=lambda q: (len(q), q)):
            if qid not in queries:
                raise DataError(f"{bm25.where(qid)}: query {qid!r} is not in {d / 'queries.tsv'}")
            bm_ids = [h.docid for h in bm25[qid]]
            sp_ids = [h.docid for h in splade.get(qid, [])]
            sp_rank = _rank_of(splade.get(qid, []))
            bm_rank = {x: i for i, x in enumerate(bm_ids)}
            grades = qrels.get(qid, {})
            if qrels_file and not any(g > 0 for g in grades.values()):
                continue

            def key(doc, grades=grades, sp_rank=sp_rank, bm_rank=bm_rank):
                return (-max(grades.get(doc, 0), 0), sp_rank.get(doc, 10 ** 6), bm_rank[doc])
            for ids, order in draws(rng, bm_ids, key, args.n, args.pool, sp_ids, args.lists_per_query,
                                    args.windows_per_query):
                for doc in ids:
                    if doc not in corpus:
                        raise DataError(f"{bm25.where((qid, doc))}: document {doc!r} is not in {d / 'docs.tsv'}")
                recs.append({**listwise_record(queries[qid], [corpus[x] for x in ids], order, **kw), "source": name})
        counts[name] = len(recs) - before
    if args.scifact_lists:
        d = data / "scifact"
        run = read_run(d / "run.bm25.train.top100.txt")
        if args.scifact_split:       # only its `train` part gives lists; `val` stays unseen
            from perank_jax.evaluate import read_split_qids
            allowed = set(read_split_qids(f"{args.scifact_split}:train"))
            run = {q: hits for q, hits in run.items() if q in allowed}
        sci = list(qrels_lists(run, read_queries(d / "queries.train.tsv"),
                               read_corpus(d / "corpus.jsonl", title_format=True), read_qrels(d / "qrels.train.txt"),
                               n=args.n, **kw))
        picked = rng.choice(len(sci), size=min(args.scifact_lists, len(sci)), replace=False)
        recs.extend({**sci[i], "source": "scifact-train"} for i in sorted(picked))
        counts["scifact-train"] = len(picked)
    for name in args.drop:           # drawn like the full build (same random stream), then left out
        recs = [r for r in recs if r["source"] != name]
        counts[name] = 0
    return [{k: v for k, v in r.items() if k != "source"} for r in recs], counts


def stage1_records(data: Path, args) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(args.seed + 1)
    sources = {"wiki": (data / "wiki" / "passages.jsonl", False), "dl20": (data / "dl20" / "docs.tsv", False),
               "dl22": (data / "dl22" / "docs.tsv", False), "scifact": (data / "scifact" / "corpus.jsonl", True)}
    recs, counts = [], {}
    for name, (path, title) in sources.items():
        corpus = read_corpus(path, title_format=title)
        ids = sorted(corpus)
        take = rng.choice(len(ids), size=min(args.stage1_per_source, len(ids)), replace=False)
        for i in take:
            recs.append(reconstruction_record(corpus[ids[i]], max_words=args.max_words))
        counts[name] = len(take)
    order = rng.permutation(len(recs))
    return [recs[i] for i in order], counts


def embed_texts(records: list[dict], encoder: str, max_len: int, caches=()) -> tuple[list[str], np.ndarray]:
    """Every passage and query text of `records`, and its vector from the frozen encoder.
    Texts that are documents of a `perank encode` cache in `caches` (made by this very encoder
    setting: checked, else refused) take the cached vector instead of being encoded again."""
    from perank_jax.inference import open_cache
    from perank_jax.train import cache_embedder
    from perank_jax.weights import load_encoder, resolve_model_path
    texts = list(dict.fromkeys(t for r in records for t in r["extra_texts"] + ([r["query_text"]] if "query_text" in r else [])))
    enc = load_encoder(resolve_model_path(encoder), normalize=True, max_length=max_len, dtype="float32")
    embed = lambda ts: enc.encode(ts, batch_size=64)  # noqa: E731
    for c in caches:                                      # opened once; EmbeddingMismatch names every difference
        embed = cache_embedder(open_cache(c, enc, None, enc.dim), fallback=embed)
    return texts, np.asarray(embed(texts), np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT / "data" / "raw"),
                   help="the retrieval data folder (`perank data fetch --out data/raw`)")
    p.add_argument("--out", default="data", help="output folder")
    p.add_argument("--split", default=str(SPLIT), help="DL20 train/heldout split (JSON)")
    p.add_argument("-n", type=int, default=20, help="candidates per list")
    p.add_argument("--pool", type=int, default=30, help="draws come from BM25 and SPLADE++ top-`pool`")
    p.add_argument("--lists-per-query", type=int, default=8)
    p.add_argument("--windows-per-query", type=int, default=3, help="of those, contiguous BM25 windows")
    p.add_argument("--scifact-lists", type=int, default=0, help="add this many SciFact train lists")
    p.add_argument("--scifact-split", default=None, metavar="JSON",
                   help="SciFact train split (configs/splits/scifact-train.json): lists come only from its "
                        "`train` part")
    p.add_argument("--template", default="compact", choices=["paper", "compact"])
    p.add_argument("--query-token", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--content-view", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--stage1-per-source", type=int, default=300)
    p.add_argument("--max-words", type=int, default=48, help="stage-1 passages are cut to this many words")
    p.add_argument("--embed", default=None, metavar="ENCODER",
                   help="also write stage2.emb.npz with this encoder (a path or packaged:minilm)")
    p.add_argument("--encoder-max-len", type=int, default=256)
    p.add_argument("--embed-cache", action="append", default=[], metavar="DIR",
                   help="(with --embed) a `perank encode` cache of a source corpus made with the same encoder and "
                        "--encoder-max-len: its documents are not encoded again (repeatable)")
    p.add_argument("--drop", action="append", default=[], choices=STAGE2_SOURCES, metavar="SOURCE",
                   help=f"leave this source's stage-2 lists out (repeatable; one of {', '.join(STAGE2_SOURCES)}); "
                        "the lists kept are those of the full build")
    p.add_argument("--limit-queries", type=int, default=0, help="(tests) keep only the first k lists per set")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    data, out = Path(a.data), Path(a.out)
    try:
        if not data.is_dir():
            raise DataError(f"{data}: data folder not found (see this file's header for where the data comes from)")
        split = read_split(a.split)
        s1, c1 = stage1_records(data, a)
        s2, c2 = stage2_records(data, a, split)
        if a.limit_queries:
            s1, s2 = s1[:a.limit_queries * 4], s2[:a.limit_queries * 4]
        table = embed_texts(s2, a.embed, a.encoder_max_len, a.embed_cache) if a.embed else None
        out.mkdir(parents=True, exist_ok=True)           # everything is computed: only writing is left
        n1 = write_records(s1, out / "stage1.jsonl")
        n2 = write_records(s2, out / "stage2.jsonl")
        if table is not None:
            from perank_jax.train import save_table
            save_table(out / "stage2.emb.npz", *table)
        n_emb = len(table[0]) if table is not None else 0
    except (ValueError, OSError) as e:   # DataError, ConfigError, unreadable files: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| file | records | from |")
    print("|---|---|---|")
    print(f"| {out / 'stage1.jsonl'} | {n1} | {', '.join(f'{k} {v}' for k, v in c1.items())} |")
    print(f"| {out / 'stage2.jsonl'} | {n2} | {', '.join(f'{k} {v}' for k, v in c2.items())} |")
    if n_emb:
        print(f"| {out / 'stage2.emb.npz'} | {n_emb} texts | {a.embed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
