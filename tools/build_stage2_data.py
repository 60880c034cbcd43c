"""Stage-2 (listwise) training records: query + candidate passages + teacher ranking.

From judgements (e.g. SciFact train; candidates = BM25 top-n, relevant documents first):
    python tools/build_stage2_data.py --run data/raw/scifact/run.bm25.train.top100.txt \
        --queries data/raw/scifact/queries.train.tsv --qrels data/raw/scifact/qrels.train.txt \
        --corpus data/raw/scifact/corpus.jsonl --title-format -n 20 --out data/stage2.scifact.jsonl

From a teacher's rankings (e.g. an LLM's reranking written as a TREC run) of candidate lists:
    python tools/build_stage2_data.py --requests candidates.jsonl --teacher-run teacher.txt -n 20 --out ...

Never build training lists from the queries you evaluate on.
data/raw comes from `perank data fetch --out data/raw` (docs/data.md).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from perank_jax.data import read_corpus, read_qrels, read_queries, read_requests, read_run
from perank_jax.data import qrels_lists, request_lists, write_records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--out", required=True)
    p.add_argument("-n", type=int, default=20, help="candidates per list")
    p.add_argument("--run"), p.add_argument("--queries"), p.add_argument("--qrels"), p.add_argument("--corpus")
    p.add_argument("--title-format", action="store_true", help='"Title: {title} Content: {text}"')
    p.add_argument("--shuffle-seed", type=int, default=None, help="show candidates in a seeded random order")
    p.add_argument("--requests", help="candidate lists (rank_llm JSONL or flat candidates JSONL)")
    p.add_argument("--teacher-run", help="TREC run whose per-query order is the teacher ranking")
    a = p.parse_args(argv)
    if a.requests:
        if not a.teacher_run:
            p.error("--requests needs --teacher-run")
        teacher = {q: [h.docid for h in hits] for q, hits in read_run(a.teacher_run).items()}
        records = list(request_lists(read_requests(a.requests, a.title_format), teacher, a.n))
    else:
        if not all((a.run, a.queries, a.qrels, a.corpus)):
            p.error("give --run, --queries, --qrels and --corpus (or --requests and --teacher-run)")
        records = list(qrels_lists(read_run(a.run), read_queries(a.queries), read_corpus(a.corpus, a.title_format),
                                   read_qrels(a.qrels), n=a.n, shuffle_seed=a.shuffle_seed))
    count = write_records(records, a.out)
    sizes = [len(r["extra_texts"]) for r in records]
    top = [r["ranking"][0] for r in records]
    print("| lists | candidates/list (mean) | min | teacher top-1 at first-stage rank 1 | file |")
    print("|---|---|---|---|---|")
    print(f"| {count} | {np.mean(sizes):.1f} | {min(sizes)} | {np.mean(np.asarray(top) == 0):.3f} | {a.out} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
