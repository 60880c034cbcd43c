"""Shared prompt prefix: prefill once per query, reuse the KV cache for every window.

Every window prompt of one query begins with the same tokens up to the first passage
placeholder (chat header, instruction, query; with the paper's and the compact template the
window size is part of it, so windows of another size get their own prefix). The distinct
prefixes of a rerank call are prefilled once, together, into a KV table; each window then
prefills only its remainder (placeholders, suffix, query slot) on top of its query's prefix
and decodes as usual (perank_jax.inference.decode.decode_steps).

When a call is many queries of one window each (a server's batch of top-20 requests), a
query's own prefix would be used once, so the plan instead shares the template head (the
tokens before the query, the same for every query) in one table row and each window feeds its
query and the rest: 8 top-20 queries prefill one head row and 8 remainders instead of 8
prefixes and 8 remainders. Token accounting does not depend on the plan: a query is counted
its own prefix once per window size and every window's tokens after it.

    plan = plan_prefixes({(q, size): TokenizedPrompt}, uses, head_of)   host side: rows, which row each key uses
    kv = prefill_plan(prefill, compile, state, plan.rows, length_bucket=, batch_bucket=, mesh=)
                                                      padded, sharded, compiled once per shape -> PrefixKV
    args = prefixed_args(kv, table_rows, arrays, mesh)   a window batch's decode arguments after it
    decode_after_prefix(model, kv, pidx, ids, prompt_mask, ph_mask, passages, valid, steps=, mode=)

Positions are the real ones (a remainder starts at its prefix's length) and attention is causal
by position with empty slots at -1, so the padding after a short prefix is never attended to:
each window sees the same keys and values as one prefill of its whole prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.core.buckets import TraceCounter, round_up
from perank_jax.core.sharding import shard_rows
from perank_jax.inference.decode import decode_steps
from perank_jax.models.decoder import KVCache, init_cache
from perank_jax.models.perank import as_slots, embed_prompt, passage_keys
from perank_jax.listwise.prompts import TokenizedPrompt


class PrefixKV(NamedTuple):
    k: jax.Array      # [L, P, Tp, KVH, hd]
    v: jax.Array      # [L, P, Tp, KVH, hd]
    pos: jax.Array    # [P, Tp] int32 position of each slot, -1 = padding


def split_prompt(prompt: TokenizedPrompt) -> tuple[np.ndarray, TokenizedPrompt]:
    """(the ids before the first placeholder, the rest as a TokenizedPrompt)."""
    if not prompt.placeholder.any():
        raise ValueError("a window prompt without a passage placeholder has no shared prefix")
    cut = int(np.argmax(prompt.placeholder))
    return prompt.ids[:cut], TokenizedPrompt(prompt.ids[cut:], prompt.placeholder[cut:])


def common_length(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading ids `a` and `b` share."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


@dataclass
class PrefixPlan:
    """The distinct prefixes of one rerank call, keyed (query index, window size)."""
    rows: list[np.ndarray] = field(default_factory=list)      # prefix ids, one per table row
    row_of: dict = field(default_factory=dict)                # key -> table row
    remainder: dict = field(default_factory=dict)             # key -> TokenizedPrompt after its row's prefix
    own: dict = field(default_factory=dict)                   # key -> its query's own prefix (to the 1st placeholder)
    common: bool = False                                      # True: one template-head row shared by all queries

    def prefix_tokens(self, n_queries: int) -> list[int]:
        """Each query's own distinct prefixes, counted once (the same whichever plan ran)."""
        out, seen = [0] * n_queries, set()
        for (q, *_), ids in self.own.items():
            if (q, ids.tobytes()) not in seen:
                seen.add((q, ids.tobytes()))
                out[q] += len(ids)
        return out

    def counted(self, key) -> int:
        """The tokens of window `key` counted after its own prefix (the same whichever plan ran)."""
        return len(self.remainder[key]) + len(self.rows[self.row_of[key]]) - len(self.own[key])


def plan_prefixes(prompts: dict, uses: dict | None = None, head_of=None, *, own_rows: bool = True):
    """`prompts`: {(query index, window size): TokenizedPrompt} -> PrefixPlan, or None (nothing shared).

    Each query's own prefix (to its first placeholder) gets a row, shared by that query's windows of
    one size; different queries never share it. When every key is a different query's only window
    (`uses`: windows per key), all of one size, and `head_of(size)` gives that size's template head,
    there is nothing to reuse per query: the head is the one row (each prompt cut where it leaves the
    head, never past its first placeholder) and every remainder starts at the query.
    own_rows=False: the head or nothing (None: the caller feeds whole prompts)."""
    own = {key: split_prompt(p)[0] for key, p in prompts.items()}
    sizes = {key[1] for key in prompts}                 # one size: each key is another query's
    single = uses is not None and all(uses.get(k) == 1 for k in prompts)
    common = head_of is not None and single and len(sizes) == 1 and len(prompts) > 1
    if not (common or own_rows):
        return None
    plan, seen = PrefixPlan(own=own, common=common), {}
    head = head_of(next(iter(sizes))) if common else None
    for key, prompt in prompts.items():
        cut = min(common_length(prompt.ids, head), len(own[key])) if common else len(own[key])
        ids = prompt.ids[:cut]
        group = ids.tobytes() if common else (key[0], ids.tobytes())
        if group not in seen:
            seen[group] = len(plan.rows)
            plan.rows.append(ids)
        plan.row_of[key] = seen[group]
        plan.remainder[key] = TokenizedPrompt(prompt.ids[cut:], prompt.placeholder[cut:])
    return plan


def pad_prefixes(rows: list[np.ndarray], *, length_bucket: int, batch_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) [P, Tp]: P = len(rows) rounded up to `batch_bucket`, Tp to `length_bucket`.
    Padding rows are empty (never referenced)."""
    P = round_up(len(rows), batch_bucket)
    T = round_up(max(len(r) for r in rows), length_bucket)
    ids = np.zeros((P, T), np.int32)
    mask = np.zeros((P, T), bool)
    for p, r in enumerate(rows):
        ids[p, :len(r)], mask[p, :len(r)] = r, True
    return ids, mask


def prefill_plan(prefill, compile_fn, state, rows: list[np.ndarray], *, length_bucket: int, batch_bucket: int,
                 mesh) -> PrefixKV:
    """Prefill every distinct shared prefix (`PrefixPlan.rows`) once: padded to (`batch_bucket`,
    `length_bucket`), rows split over the mesh's data axis, `prefill` (from make_prefix_fns) compiled
    once per padded shape through `compile_fn(key, fn, *args)`. Returns the KV table windows continue from."""
    ids, mask = shard_rows(pad_prefixes(rows, length_bucket=length_bucket, batch_bucket=batch_bucket), mesh)
    run = compile_fn(("prefix", ids.shape), prefill, state, ids, mask)
    return run(state, ids, mask)


def prefixed_args(kv: PrefixKV, table_rows, arrays, mesh) -> tuple:
    """The decode arguments of a padded batch of window remainders (`arrays`, as decode.pad_batch
    returns them) after their shared prefixes: the KV table, each row's table row (`table_rows`;
    padding rows take row 0, never read back), then the arrays, rows split over the mesh's data axis."""
    pidx = np.zeros(len(arrays[0]), np.int32)
    pidx[:len(table_rows)] = table_rows
    return (kv, *shard_rows((pidx, *arrays), mesh))


def prefill_prefixes(model, ids, mask) -> PrefixKV:
    """Run the prefixes (no placeholders) once; their keys and values at positions 0..len-1."""
    P, T = ids.shape
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (P, T))
    x = model.embed(ids)
    cache = init_cache(model.cfg, P, T, x.dtype, mesh=model.mesh)
    _, cache = model.forward(x, positions, mask, cache, prefill=True)          # a prompt from 0, empty cache
    return PrefixKV(cache.k, cache.v, cache.pos)


def decode_after_prefix(model, kv: PrefixKV, pidx, ids, prompt_mask, ph_mask, passages, valid, *,
                        steps: int, mode: str = "decode"):
    """decode_rows for prompts split at their first placeholder: row b continues prefix table
    row pidx[b] with its remainder ids/prompt_mask/ph_mask [B, T]; passages [B, N, k, D] (or
    [B, N, D]) as in decode_rows. Same outputs as decode_rows."""
    B, T = ids.shape
    Tp = kv.pos.shape[1]
    k, v = jnp.take(kv.k, pidx, axis=1), jnp.take(kv.v, pidx, axis=1)
    pos = jnp.take(kv.pos, pidx, axis=0)
    plen = (pos.max(axis=1) + 1).astype(jnp.int32)                       # prefix lengths
    empty = init_cache(model.cfg, B, Tp + T + max(steps - 1, 1), k.dtype, mesh=model.mesh)
    cache = KVCache(k=jax.lax.dynamic_update_slice(empty.k, k, (0, 0, 0, 0, 0)),
                    v=jax.lax.dynamic_update_slice(empty.v, v, (0, 0, 0, 0, 0)),
                    pos=empty.pos.at[:, :Tp].set(pos), index=jnp.asarray(Tp, jnp.int32))
    passages = as_slots(passages)
    x = embed_prompt(model, ids, ph_mask, passages)
    positions = plen[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
    h, cache = model.forward(x, positions, prompt_mask, cache)
    rem = prompt_mask.sum(axis=1).astype(jnp.int32)
    h_last = jnp.take_along_axis(h, (rem - 1)[:, None, None], axis=1)[:, 0]
    return decode_steps(model, h_last, cache, plen + rem, passage_keys(passages), valid, steps=steps, mode=mode)


def make_prefix_fns(graphdef, decode_counter: TraceCounter | None = None,
                    prefill_counter: TraceCounter | None = None):
    """(jit prefill f(state, ids, mask) -> PrefixKV, jit decode f(state, kv, pidx, ids, prompt_mask,
    ph_mask, passages, valid, steps=, mode=) -> (chosen, first_scores)) for a split decoder."""
    def prefill(state, ids, mask):
        return prefill_prefixes(nnx.merge(graphdef, state), ids, mask)

    def decode(state, kv, pidx, ids, prompt_mask, ph_mask, passages, valid, *, steps, mode):
        return decode_after_prefix(nnx.merge(graphdef, state), kv, pidx, ids, prompt_mask, ph_mask, passages,
                                   valid, steps=steps, mode=mode)
    count = lambda c, f: c.counted(f) if c is not None else f  # noqa: E731
    return (jax.jit(count(prefill_counter, prefill)),
            jax.jit(count(decode_counter, decode), static_argnames=("steps", "mode")))
