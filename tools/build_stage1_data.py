"""Stage-1 (alignment) training records from a passage collection.

    python tools/build_stage1_data.py --passages data/raw/wiki/passages.jsonl \
        --out data/stage1.wiki.jsonl [--limit 1000] [--max-words 100] [--seed 0]

Input: any corpus perank_jax.data.trec.read_corpus reads (BEIR JSONL, {"id","contents"}
JSONL, `docid<TAB>text` TSV); several --passages files are concatenated. Output: one
text-reconstruction record per passage (see perank_jax.data.training_records).
data/raw comes from `perank data fetch --out data/raw` (docs/data.md).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from perank_jax.data import read_corpus, reconstruction_record, write_records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--passages", action="append", required=True, help="corpus file (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--title-format", action="store_true", help='"Title: {title} Content: {text}"')
    p.add_argument("--limit", type=int, default=None, help="keep this many passages (seeded sample)")
    p.add_argument("--max-words", type=int, default=None, help="truncate each passage to this many words")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    texts = []
    for path in a.passages:
        texts += list(read_corpus(path, title_format=a.title_format).values())
    if a.limit is not None and a.limit < len(texts):
        keep = np.sort(np.random.default_rng(a.seed).choice(len(texts), a.limit, replace=False))
        texts = [texts[i] for i in keep]
    records = [reconstruction_record(t, a.max_words) for t in texts]
    n = write_records(records, a.out)
    words = [len(r["extra_texts"][0].split()) for r in records]
    print("| records | words/passage (mean) | max | file |\n|---|---|---|---|")
    print(f"| {n} | {np.mean(words):.1f} | {max(words)} | {a.out} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
