"""`perank train`, `perank retrieve`, `perank evaluate` and `perank tables`: training and evaluation."""
from __future__ import annotations

import sys

from perank_jax.cli.args import (POSITIVE, number, warn)
from perank_jax.core.outputs import check_outputs


# --- train (issue: two-stage training) --------------------------------------------------
def add_train(sub):
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
def add_retrieve(sub):
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


def add_evaluate(sub):
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
            from perank_jax.core.atomic import atomic_json
            out = {k: {"file": getattr(a, k), "aggregate": e.aggregate, "per_query": e.per_query,
                       "missing": e.missing} for k, e in evals.items()}
            out["tests"] = [dict(vars(t), delta=t.delta) for t in tests]
            atomic_json(a.json, out, indent=1)
    p.set_defaults(func=run)



def add_tables(sub):
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


