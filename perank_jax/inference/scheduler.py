"""The window schedule of one rerank call: sliding windows of every query, stage by stage, in batches.

Each query's windows run from the bottom of its list up (perank_jax.listwise.windows); the windows
of all queries at the same stage are decoded together, `engine.rows_per_call` at a time, and each
window's order is written back into its query's list before the next stage reads it. With shared
prefixes, the distinct prompt prefixes of the whole call are planned (prefix.plan_prefixes: each
query's own, or one template head when every query has one window) and prefilled once before the
first stage, and every window then feeds only its remainder.

    result = schedule(engine, prompt_of, slots, sizes, plans, top_k=None, mode="decode", min_n=20,
                      share_prefix=True, query_slot=1, head_of=None)
    result.orders / .processed / .generated / .prefix_tokens      per query
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from perank_jax.inference.decode import NonFiniteScores
from perank_jax.inference.prefix import plan_prefixes


@dataclass
class Scheduled:
    orders: list[list[int]]       # per query: a permutation of its passages, best first
    processed: list[int]          # prompt tokens prefilled per query (its shared prefixes once)
    generated: list[int]          # decode steps per query, summed over its windows
    prefix_tokens: list[int]      # of `processed`: the query's shared prefixes


def schedule(engine, prompt_of, slots, sizes, plans, *, top_k=None, mode: str = "decode", min_n: int = 0,
             share_prefix: bool = True, query_slot: int = 0, name_query=str, head_of=None) -> Scheduled:
    """Rank every query's passages by its windows.

    prompt_of(q, num): query q's tokenised window prompt of `num` passages (listwise.prompts).
    slots[q]: query q's projected vectors [n (+1 query slot), k, D]; sizes[q]: its n passages;
    plans[q]: its windows as (start, end) pairs in decoding order. query_slot: 1 when the last row of slots[q] is the query's
    own slot, fed after every window's passages. name_query(q): how an error names query q.
    head_of(size): the template head of a window prompt of `size` passages (the tokens before any
    query; lets a call of one window per query share it, prefix.plan_prefixes). share_prefix: True
    (each query's own prefix, or the head), "head" (the head when it applies, else whole prompts),
    False (whole prompts)."""
    n_queries = len(plans)
    orders = [list(range(n)) for n in sizes]
    prompts = {(q, e - s): prompt_of(q, e - s) for q, plan in enumerate(plans) for s, e in plan}
    uses = Counter((q, e - s) for q, plan in enumerate(plans) for s, e in plan)       # windows per prompt
    shared = plan_prefixes(prompts, uses, head_of, own_rows=share_prefix is True) if share_prefix and prompts \
        else None
    kv = engine.prefill(shared.rows) if shared else None
    prefix_tokens = shared.prefix_tokens(n_queries) if shared else [0] * n_queries
    processed, generated = list(prefix_tokens), [0] * n_queries
    for stage in range(max((len(p) for p in plans), default=0)):
        rows = [(q, *plans[q][stage]) for q in range(n_queries) if stage < len(plans[q])]
        for lo in range(0, len(rows), engine.rows_per_call):
            chunk = rows[lo:lo + engine.rows_per_call]
            keys = [(q, e - s) for q, s, e in chunk]
            fed = [shared.remainder[k] if shared else prompts[k] for k in keys]
            vecs = [slots[q][orders[q][s:e] + ([len(orders[q])] if query_slot else [])] for q, s, e in chunk]
            try:
                perms = engine.decode(fed, vecs, [e - s for q, s, e in chunk], top_k=top_k, mode=mode,
                                      min_n=min_n + query_slot,
                                      prefix=None if kv is None else (kv, [shared.row_of[k] for k in keys]))
            except NonFiniteScores as err:        # name the query (index `row` of this batch)
                q = chunk[err.row][0]
                raise NonFiniteScores(err.detail, q, name_query(q)) from None
            for (q, s, e), perm, prompt, key in zip(chunk, perms, fed, keys):
                window_ids = orders[q][s:e]
                orders[q][s:e] = [window_ids[i] for i in perm]
                processed[q] += shared.counted(key) if shared else len(prompt)
                generated[q] += 1 if mode == "single_pass" else min(top_k or (e - s), e - s)
    return Scheduled(orders, processed, generated, prefix_tokens)
