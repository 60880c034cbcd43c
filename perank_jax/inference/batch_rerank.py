"""Rerank many requests (TREC run or rank_llm JSONL, as perank_jax.data.trec.Request) in batches
of queries, with per-query stats: the engine behind `perank rerank`. Candidates carry their
docids, so a ranker with an embedding cache (`ranker.use_embeddings`) looks them up there."""
from __future__ import annotations

from perank_jax.data.trec import Candidate, DataError, Request
from perank_jax.inference.decode import NonFiniteScores
from perank_jax.core.interrupts import check_interrupt
from perank_jax.listwise.prompts import PromptError
from perank_jax.inference.ranker import PERanker


def check_requests(requests) -> None:
    """Refuse (DataError) a query without candidates or a candidate without text, before any work."""
    for r in requests:
        if not r.candidates:
            raise DataError(f"query {r.qid!r} has no candidates to rerank")
        for c in r.candidates:
            if not str(c.text).strip():
                raise DataError(f"query {r.qid!r}: document {c.docid!r} has empty text (nothing to encode)")


def rerank_requests(ranker: PERanker, requests, *, window: int | None = 20, stride: int = 10,
                    top_k: int | None = None, mode: str = "decode", batch_queries: int = 1,
                    progress: bool = False):
    """Rerank perank_jax.data.trec.Request objects; returns (reranked Requests, per-query stat dicts).
    Nothing is written here, so a failure leaves no partial output behind."""
    check_requests(requests)
    for r in requests:            # a query too long for the decoder: refused by name before any work
        n = len(r.candidates)
        try:
            ranker.tokenized_prompt(r.query, min(window or n, n))
        except PromptError as e:
            raise DataError(f"query {r.qid!r}: {e}") from None
    out, stats = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(requests), desc="rerank", unit="query")
    try:
        for lo in range(0, len(requests), batch_queries):
            chunk = requests[lo:lo + batch_queries]
            try:
                orders = ranker.rerank_batch([r.query for r in chunk], [[c.text for c in r.candidates] for r in chunk],
                                             window=window, stride=stride, top_k=top_k, mode=mode,
                                             docids=[[c.docid for c in r.candidates] for r in chunk])
            except NonFiniteScores as e:
                raise NonFiniteScores(e.detail, e.row, f"query {chunk[e.row].qid!r}") from None
            for r, order, st in zip(chunk, orders, ranker.last_stats):
                n = len(order)
                cands = [Candidate(r.candidates[i].docid, float(n - rank), r.candidates[i].text)
                         for rank, i in enumerate(order)]
                out.append(Request(r.qid, r.query, cands))
                stats.append({"qid": r.qid, **st.to_dict()})
            if bar is not None:
                bar.update(len(chunk))
            check_interrupt()                 # a Ctrl-C whose KeyboardInterrupt Python dropped
    finally:                                  # an error is printed on a line of its own
        if bar is not None:
            bar.close()
    return out, stats
