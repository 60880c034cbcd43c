"""Atomic writers of TREC runs, qrels and rank_llm request files (the readers: perank_jax/data/trec.py).

Every writer goes through a temp file + os.replace, so a crash never leaves a half-written file,
and refuses empty output. `write_run` writes strictly decreasing scores (rank-derived or given).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from perank_jax.core.atomic import atomic_write
from perank_jax.data.trec import Candidate, DataError, Hit, Request


def _pairs(entries) -> list[tuple[str, float | None]]:
    out = []
    for e in entries:
        if isinstance(e, str):
            out.append((e, None))
        elif isinstance(e, (Hit, Candidate)):
            out.append((e.docid, e.score))
        else:
            out.append((str(e[0]), float(e[1])))
    return out


def write_run(run: Mapping[str, Iterable], path, tag: str = "perank", scores: str = "rank") -> Path:
    """Write a TREC run atomically. Each query's entries are docids, Hits, Candidates or
    (docid, score) pairs, best first. scores="rank": score = n - rank + 1 (n..1), strictly
    decreasing; scores="given": write the given scores, which must strictly decrease."""
    if scores not in ("rank", "given"):
        raise ValueError(f"scores must be 'rank' or 'given', got {scores!r}")
    if not run:
        raise DataError(f"{path}: refusing to write an empty run")
    rows = []
    for qid, entries in run.items():
        pairs = _pairs(entries)
        if not pairs:
            raise DataError(f"{path}: query {qid!r} has an empty ranking")
        if len({d for d, _ in pairs}) != len(pairs):
            raise DataError(f"{path}: query {qid!r} lists a docid twice")
        n, prev = len(pairs), math.inf
        for r, (docid, s) in enumerate(pairs, 1):
            if scores == "rank":
                s = float(n - r + 1)
            elif s is None:
                raise DataError(f"{path}: scores='given' but query {qid!r} has no score for {docid!r}")
            elif not s < prev:
                raise DataError(f"{path}: query {qid!r}: score at rank {r} ({s!r}) does not strictly "
                                f"decrease (previous {prev!r})")
            prev = s
            rows.append(f"{qid} Q0 {docid} {r} {s!r} {tag}\n")
    return atomic_write(path, lambda f: f.writelines(rows))


def write_qrels(qrels: Mapping[str, Mapping[str, int]], path) -> Path:
    rows = [f"{q} 0 {d} {int(g)}\n" for q, judged in qrels.items() for d, g in judged.items()]
    if not rows:
        raise DataError(f"{path}: refusing to write empty qrels")
    return atomic_write(path, lambda f: f.writelines(rows))


def write_requests(requests: Sequence[Request], path) -> Path:
    """rank_llm request JSONL (doc text under doc.text)."""
    rows = []
    for r in requests:
        cands = [{"docid": c.docid, "score": c.score, "doc": {"text": c.text}} for c in r.candidates]
        rows.append(json.dumps({"query": {"text": r.query, "qid": r.qid}, "candidates": cands},
                               ensure_ascii=False) + "\n")
    return atomic_write(path, lambda f: f.writelines(rows))
