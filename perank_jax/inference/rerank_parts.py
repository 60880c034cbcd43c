"""`perank rerank`'s outputs, and reranking in resumable parts over several processes (--distributed).

The queries are cut into parts of `part_queries` consecutive queries (a multiple of the batch size,
so every query is reranked in the same batch as in a one-process run). Each process reranks its
share of the parts still to do (perank_jax.core.processes) and writes each part atomically to
`<out>.parts/part_NNNNNN.jsonl` (per query: the ranked docids with their scores, and its stats).
After a barrier, process 0 assembles the parts in query order and writes the TREC run or rank_llm
JSONL and the stats sidecar with the same writers, so the files are those of a one-process run (the
same bytes apart from the timings in the sidecar). Then the parts are removed.

A process that dies leaves at most finished parts (never a final output); rerunning the same command
(on any number of processes) reranks only the parts that are missing or unreadable. `plan.json` in
the parts folder holds a fingerprint of the requests and the settings, and parts of another run are
refused rather than mixed in.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from perank_jax.core.atomic import atomic_json, atomic_text
from perank_jax.inference.batch_rerank import check_requests, rerank_requests
from perank_jax.core.buckets import round_up
from perank_jax.data import trec_write
from perank_jax.data.trec import Candidate, DataError, Request
from perank_jax.core.outputs import commit_files
from perank_jax.core.processes import barrier, checked_here, gather_flags, rank, share

PLAN_VERSION = 1


def write_reranked(reranked, stats, out, stats_path, tag: str = "perank") -> None:
    """The final outputs of `perank rerank`: a TREC run (scores as given), or rank_llm JSONL when
    `out` ends in .jsonl, and the per-query stats JSONL sidecar, committed together (outputs.commit_files)."""
    if str(out).endswith(".jsonl"):
        write = lambda tmp: trec_write.write_requests(reranked, tmp)  # noqa: E731
    else:
        write = lambda tmp: trec_write.write_run({r.qid: r.candidates for r in reranked}, tmp,  # noqa: E731
                                                 tag=tag, scores="given")
    commit_files([(out, write), (stats_path, lambda tmp: atomic_text(tmp, "".join(json.dumps(s) + "\n"
                                                                                  for s in stats)))])


def run_fingerprint(requests, settings: dict) -> str:
    """sha256 of the settings and of every query and candidate (id and text), in order."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for r in requests:
        h.update(json.dumps([r.qid, r.query, [[c.docid, c.text] for c in r.candidates]]).encode())
    return h.hexdigest()


def parts_dir(out) -> Path:
    return Path(f"{out}.parts")


def rerank_in_parts(ranker, requests, out, stats_path, *, settings: dict, part_queries: int = 64,
                    batch_queries: int = 1, tag: str = "perank", progress: bool = False, **rerank_kw):
    """Rerank `requests` over all processes (module docstring); every process calls this with the
    same arguments. Returns (reranked, stats) on process 0, which wrote the outputs, else None.
    `settings`: what else changes a ranking (model, encoder, dtype, ...), fingerprinted with the
    requests and `rerank_kw` (window, stride, top_k, mode: rerank_requests' arguments)."""
    check_requests(requests)
    index, count = rank()
    size = round_up(part_queries, batch_queries)
    d = parts_dir(out)
    plan = {"version": PLAN_VERSION, "queries": len(requests), "part_queries": size,
            "fingerprint": run_fingerprint(requests, dict(settings, batch_queries=batch_queries, **rerank_kw))}
    planned = (d / "plan.json").is_file()
    if planned:
        try:
            old = json.loads((d / "plan.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{d / 'plan.json'}: unreadable ({e}); delete {d} to start over") from None
        if old != plan:
            raise DataError(f"{d}: holds parts of a run with other inputs or settings; rerun that command to "
                            f"finish it, or delete {d}")
    barrier("rerank:plan")               # every process has looked before process 0 writes the plan
    if index == 0 and not planned:
        atomic_json(d / "plan.json", plan)
    parts = [requests[s:s + size] for s in range(0, len(requests), size)]
    done = [False] * len(parts)
    for k in checked_here(len(parts), index, count):
        done[k] = read_part(d, k, parts[k]) is not None
    done = gather_flags(done)
    mine = share([k for k in range(len(parts)) if not done[k]], index, count)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(len(parts[k]) for k in mine), unit="query",
                   desc="rerank" + (f" (process {index} of {count})" if count > 1 else ""))
    for k in mine:
        reranked, stats = rerank_requests(ranker, parts[k], batch_queries=batch_queries, **rerank_kw)
        write_part(d, k, reranked, stats)
        if bar is not None:
            bar.update(len(parts[k]))
    if bar is not None:
        bar.close()
    barrier("rerank:parts")              # every part is written: process 0 assembles the outputs
    result = None
    if index == 0:
        reranked, stats = [], []
        for k, part in enumerate(parts):
            got = read_part(d, k, part)
            if got is None:
                raise DataError(f"{part_path(d, k)}: missing or damaged after every process finished; rerun "
                                "the same command to rerank it")
            reranked += got[0]
            stats += got[1]
        write_reranked(reranked, stats, out, stats_path, tag=tag)
        shutil.rmtree(d, ignore_errors=True)
        result = reranked, stats
    barrier("rerank:done")
    return result


def part_path(d: Path, k: int) -> Path:
    return d / f"part_{k:06d}.jsonl"


def write_part(d: Path, k: int, reranked, stats) -> None:
    atomic_text(part_path(d, k), "".join(
        json.dumps({"qid": r.qid, "ranking": [[c.docid, c.score] for c in r.candidates], "stats": st}) + "\n"
        for r, st in zip(reranked, stats)))


def read_part(d: Path, k: int, requests):
    """(reranked Requests, stats) of part k, rebuilt with the requests' texts; None when the part
    is missing, or does not rank exactly these queries' candidates (then it is reranked again)."""
    p = part_path(d, k)
    if not p.is_file():
        return None
    try:
        rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
        if [row["qid"] for row in rows] != [r.qid for r in requests]:
            raise ValueError("other queries")
        reranked = []
        for r, row in zip(requests, rows):
            text = {c.docid: c.text for c in r.candidates}
            ids = [docid for docid, _ in row["ranking"]]
            if sorted(ids) != sorted(text):
                raise ValueError(f"query {r.qid}: other candidates")
            reranked.append(Request(r.qid, r.query, [Candidate(i, float(s), text[i]) for i, s in row["ranking"]]))
        return reranked, [row["stats"] for row in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{p}: damaged ({type(e).__name__}: {e}); reranking its queries again", file=sys.stderr)
        return None
