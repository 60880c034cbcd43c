"""Builders of training records in the reference JSONL formats (read by perank_jax.train.data).

stage 1 (alignment): one passage -> {"messages": [user: prompt with one <PLACEHOLDER>,
                     assistant: the passage text], "extra_texts": [text]}
stage 2 (listwise):  query + candidates (first-stage order) + teacher ranking ->
                     {"messages_wo_content", "messages_w_content", "ranking", "extra_texts"},
                     the user turns being prompts.embedding_prompt / prompts.content_prompt and
                     `ranking` the teacher's order as 0-based indices into extra_texts.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from perank_jax.listwise import prompts
from perank_jax.data.trec import DataError, Request

STAGE1_PROMPT = (f"The special token [{prompts.PLACEHOLDER}] represents a passage. "
                 "Reconstruct the original text of the passage.")


def _clean(text: str) -> str:
    return " ".join(prompts.strip_special(text).split())


def reconstruction_record(text: str, max_words: int | None = None) -> dict:
    """Stage-1 record: the model sees the passage's embedding and writes the passage."""
    text = _clean(text)
    if max_words:
        text = " ".join(text.split()[:max_words])
    if not text:
        raise DataError("empty passage text")
    return {"messages": [{"role": "user", "content": STAGE1_PROMPT},
                         {"role": "assistant", "content": text}],
            "extra_texts": [text]}


def listwise_record(query: str, texts: Sequence[str], ranking: Sequence[int], *, template: str = "paper",
                    query_token: bool = False, content_view: bool = True) -> dict:
    """Stage-2 record for candidates `texts` (in the order the model sees them) and the teacher's
    `ranking` (0-based indices into `texts`, best first). `template` picks the embedding-only user
    turn (prompts.user_prompt); `query_token` adds `query_text`, whose projected embedding fills
    one more placeholder opening the assistant turn (prompts.assistant_prefix)."""
    texts = [_clean(t) for t in texts]
    ranking = [int(r) for r in ranking]
    if sorted(ranking) != list(range(len(texts))):
        raise DataError(f"ranking {ranking} is not a permutation of {len(texts)} candidates")
    query = _clean(query)
    rec = {"messages_wo_content": [{"role": "user", "content": prompts.user_prompt(template, query, len(texts))}]}
    if content_view:
        rec["messages_w_content"] = [{"role": "user", "content": prompts.content_prompt(query, texts)}]
    rec.update(ranking=ranking, extra_texts=texts, prompt_template=template)
    if query_token:
        if not query:
            raise DataError("empty query text (the query token needs an embedding)")
        rec["query_text"] = query
    return rec


def record_template(rec: dict) -> str | None:
    """The prompt template a stage-2 record was built with: its `prompt_template` field, else the one
    whose text surrounds its embedding-only user turn (None: not a stage-2 record, or no template fits)."""
    if isinstance(rec.get("prompt_template"), str):
        return rec["prompt_template"]
    try:
        content = rec["messages_wo_content"][0]["content"]
        n = len(rec["ranking"])
    except (KeyError, IndexError, TypeError):
        return None
    mark = "\x00QUERY\x00"
    for name in prompts.TEMPLATES:
        head, _, tail = prompts.user_prompt(name, mark, n).partition(mark)
        if isinstance(content, str) and content.startswith(head) and content.endswith(tail) \
                and len(content) >= len(head) + len(tail):
            return name
    return None


def relevance_first(docids: Sequence[str], judged: Mapping[str, int]) -> list[int]:
    """Teacher ranking from judgements: higher grade first, ties (and unjudged) in given order."""
    return sorted(range(len(docids)), key=lambda i: (-max(judged.get(docids[i], 0), 0), i))


def qrels_lists(run: Mapping, queries: Mapping, corpus: Mapping, qrels: Mapping, n: int = 20,
                require_relevant: bool = True, shuffle_seed: int | None = None, **record_kw) -> Iterable[dict]:
    """Stage-2 records from a first-stage run and judgements (e.g. SciFact train: candidates =
    the run's top n; relevant documents missing from them replace the lowest-ranked ones;
    teacher ranking = relevant first, then first-stage order). Queries without any relevant
    document are skipped when `require_relevant`. With `shuffle_seed` the candidates are shown
    in a seeded random order (the ranking follows them). `record_kw` go to `listwise_record`."""
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    for qid in sorted(run, key=lambda q: (len(q), q)):
        if qid not in queries:
            raise DataError(f"query {qid!r} is in the run but not in the queries file")
        judged = {d: g for d, g in qrels.get(qid, {}).items() if g > 0}
        if require_relevant and not judged:
            continue
        docids = [h.docid for h in run[qid][:n]]
        missing = [d for d in sorted(judged, key=lambda d: -judged[d]) if d not in docids and d in corpus]
        for d in missing[:len(docids)]:
            keep = [i for i, x in enumerate(docids) if x not in judged]
            if not keep:
                break
            docids[keep[-1]] = d
        if rng is not None:
            docids = [docids[i] for i in rng.permutation(len(docids))]
        for d in docids:
            if d not in corpus:
                raise DataError(f"document {d!r} (query {qid!r}) is in the run but not in the corpus")
        yield listwise_record(queries[qid], [corpus[d] for d in docids], relevance_first(docids, judged),
                              **record_kw)


def request_lists(requests: Sequence[Request], rankings: Mapping[str, Sequence[str]], n: int = 20) -> Iterable[dict]:
    """Stage-2 records from candidate lists and teacher rankings given as ordered docids per qid
    (e.g. an LLM teacher's output); candidates beyond the first n are dropped."""
    for req in requests:
        if req.qid not in rankings:
            raise DataError(f"query {req.qid!r} has candidates but no teacher ranking")
        cands = req.candidates[:n]
        pos = {c.docid: i for i, c in enumerate(cands)}
        order = [pos[d] for d in rankings[req.qid] if d in pos]
        if len(set(order)) != len(order):
            raise DataError(f"teacher ranking of query {req.qid!r} repeats a document")
        order += [i for i in range(len(cands)) if i not in set(order)]
        yield listwise_record(req.query, [c.text for c in cands], order)


def write_records(records: Iterable[dict], path) -> int:
    """Write records as JSONL atomically (temp file + os.replace); returns the count."""
    import json
    from perank_jax.core.atomic import atomic_write
    count = 0

    def write(f):
        nonlocal count
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            count += 1
        if count == 0:
            raise DataError(f"{path}: no records to write")
    atomic_write(path, write)
    return count
