"""Dynamic constrained decoding over passage embeddings, compiled once per bucket.

One call ranks a batch of windows (rows). Row b has a right-padded prompt of
`lengths[b]` tokens whose placeholder positions take the row's projected slots
e [N, k, D] (k placeholders per slot; n = valid[b].sum() of them are candidates). Then:

    prefill the prompt once (KV cache)
    lax.scan over the decode steps:
        scores_i = h . key_i        (h: final-normed hidden state of the last token; float32;
                                     key_i the mean of passage i's k vectors, models.perank)
        masked argmax over the passages not yet emitted (-1e9 for the others)
        feed the chosen key_i as the next input embedding at position lengths[b] + step

Modes: "decode" (a full permutation: n steps), top_k (k steps; the rest keep their
first-stage order), "single_pass" (everything ranked by the first step's scores).
All shapes are static per bucket (B, T, N, steps, mode); rows in a bucket may have
different prompt lengths and passage counts. Steps past a batch's largest n skip
the forward pass (lax.cond), so padding passages cost no decoder work. The steps after
the prefill are `decode_steps`, shared with perank_jax.inference.prefix (a query's prompt prefix
prefilled once, each window's remainder on top of it).
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.core.buckets import TraceCounter, round_up
from perank_jax.core.constants import DECODE_MODES
from perank_jax.models.decoder import init_cache
from perank_jax.models.perank import as_slots, embed_prompt, passage_keys, passage_scores, rank_inputs


class NonFiniteScores(ValueError):
    """A window's passage scores hold NaN or inf, so no ranking can be made from them. `row` is the
    batch row (the ranker turns it into the query), `detail` the message without the query."""

    def __init__(self, detail: str, row: int | None = None, where: str = ""):
        super().__init__(f"{where}: {detail}" if where else detail)
        self.detail, self.row = detail, row


NON_FINITE = ("the decoder's passage scores are NaN or inf (likely a NaN/inf weight in the checkpoint or adapter, "
              "or an extreme query_scale / query_feedback); no ranking was written")


def finite_rows(scores, available):
    """[B] bool: every available passage's score is finite (masked ones are MASKED, finite)."""
    return jnp.all(jnp.isfinite(scores) | ~available, axis=1)


def prefill(model, ids, prompt_mask, ph_mask, passages, cache_len: int):
    """Embed the prompt with its placeholders replaced by the slots passages [B,N,k,D], run it once;
    return (h_last [B,D], cache, lengths)."""
    B, T = ids.shape
    x = embed_prompt(model, ids, ph_mask, passages)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    cache = init_cache(model.cfg, B, cache_len, x.dtype, mesh=model.mesh)
    h, cache = model.forward(x, positions, prompt_mask, cache, prefill=True)   # a prompt from 0, empty cache
    lengths = prompt_mask.sum(axis=1).astype(jnp.int32)
    h_last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return h_last, cache, lengths


def decode_rows(model, ids, prompt_mask, ph_mask, passages, valid, *, steps: int, mode: str = "decode"):
    """Pure decoding for one bucket (call inside jit).

    ids, prompt_mask, ph_mask [B,T]; passages [B,N,k,D] (projected slots; [B,N,D] means k = 1);
    valid [B,N] bool. Returns (chosen [B,steps] int32, first_scores [B,N] float32). In "single_pass" mode
    `chosen` is the full argsort of the first scores (steps = N).
    """
    T = ids.shape[1]
    passages = as_slots(passages)
    h, cache, lengths = prefill(model, ids, prompt_mask, ph_mask, passages, T + max(steps - 1, 1))
    return decode_steps(model, h, cache, lengths, passage_keys(passages), valid, steps=steps, mode=mode)


def decode_steps(model, h, cache, lengths, keys, valid, *, steps: int, mode: str = "decode"):
    """The constrained decode after a prefill: h [B,D] is the last prompt token's state, `cache`
    holds the prompt and has room for steps - 1 more tokens, lengths [B] is the position of the
    next token, keys [B,N,D] the passages' keys (models.perank.passage_keys). Returns
    (chosen [B,steps] int32, first_scores [B,N] float32); a row whose scores
    were NaN/inf at any step gets NaN first_scores, which `finish_order` refuses."""
    B, N = keys.shape[:2]
    first = passage_scores(h, keys, valid)
    if mode == "single_pass":
        # stable descending sort: ties keep first-stage order; invalid passages go last
        order = jnp.argsort(-first, axis=1, stable=True).astype(jnp.int32)
        return order, first
    if mode != "decode":
        raise ValueError(f"unknown decode mode {mode!r} (expected one of {DECODE_MODES})")
    n_steps = jnp.minimum(valid.sum(axis=1).max(), steps)  # dynamic: the batch's real work

    def pick(h, used, ok):
        scores = passage_scores(h, keys, valid & ~used)
        idx = jnp.argmax(scores, axis=1).astype(jnp.int32)
        return idx, used | jax.nn.one_hot(idx, N, dtype=bool), ok & finite_rows(scores, valid & ~used)

    def step(carry, s):
        h, used, ok, cache = carry
        idx, used, ok = pick(h, used, ok)
        e = rank_inputs(keys, idx[:, None]).astype(h.dtype)                             # [B,1,D]

        def advance(cache):
            h2, cache = model.forward(e, (lengths + s)[:, None], jnp.ones((B, 1), bool), cache)
            return h2[:, 0].astype(h.dtype), cache

        h, cache = jax.lax.cond(s + 1 < n_steps, advance, lambda c: (h, c), cache)
        return (h, used, ok, cache), idx

    used0, ok0 = jnp.zeros((B, N), bool), jnp.ones((B,), bool)
    (h, used, ok, _), chosen = jax.lax.scan(step, (h, used0, ok0, cache), jnp.arange(steps - 1, dtype=jnp.int32))
    last, _, ok = pick(h, used, ok)
    chosen = jnp.concatenate([chosen.T, last[:, None]], axis=1) if steps > 1 else last[:, None]
    return chosen, jnp.where(ok[:, None], first, jnp.nan)


def make_decode_fn(graphdef, counter: TraceCounter | None = None):
    """jit(decode_rows) for a split decoder: f(state, ids, prompt_mask, ph_mask, passages, valid,
    steps=, mode=) -> (chosen, first_scores). Compiles once per (shapes, steps, mode)."""
    def fn(state, ids, prompt_mask, ph_mask, passages, valid, *, steps, mode):
        return decode_rows(nnx.merge(graphdef, state), ids, prompt_mask, ph_mask, passages, valid,
                           steps=steps, mode=mode)
    return jax.jit(counter.counted(fn) if counter is not None else fn, static_argnames=("steps", "mode"))


def finish_order(chosen_row, n: int, k: int | None, mode: str, scores_row=None, row: int | None = None
                 ) -> list[int]:
    """A permutation of range(n) from one row's decoded ids: the first min(k, n) decoded
    passages, then the rest in first-stage order. THE place scores become a ranking: with the
    row's first_scores, a NaN/inf among its n passages raises NonFiniteScores (never a ranking
    that is only the input order in disguise)."""
    if scores_row is not None and not np.isfinite(np.asarray(scores_row)[:n]).all():
        raise NonFiniteScores(NON_FINITE, row)
    if mode == "single_pass":
        order = [int(i) for i in chosen_row if int(i) < n]
        return order[:n]
    m = n if k is None else min(k, n)
    head = [int(i) for i in chosen_row[:m]]
    seen = set(head)
    if len(seen) != m or any(i >= n or i < 0 for i in head):
        raise RuntimeError(f"decoder produced an invalid ranking {head} for {n} passages")
    return head + [i for i in range(n) if i not in seen]


def pad_batch(prompts, passage_vecs, *, length_bucket: int = 64, passage_bucket: int | None = None,
              batch_bucket: int = 1, min_passages: int = 0, dtype=np.float32, n_valid=None):
    """Pad rows to bucket shapes.

    prompts: list of TokenizedPrompt; passage_vecs: list of [n_b, k, D] (or [n_b, D]: k = 1) arrays,
    one slot per k placeholders of the prompt; only the first n_valid[b] (default: all) are
    candidates (a query slot after them fills its placeholders but is never ranked).
    Returns numpy (ids, prompt_mask, ph_mask, passages [B,N,k,D] or [B,N,D], valid), B, T, N rounded up.
    Padding rows get a 1-token prompt and no valid passages.
    """
    n_max = max(max(len(p) for p in passage_vecs), min_passages)
    tail = passage_vecs[0].shape[1:]                       # (D,) or (k, D)
    B = round_up(len(prompts), batch_bucket)
    T = round_up(max(len(p) for p in prompts), length_bucket)
    N = round_up(n_max, passage_bucket) if passage_bucket else n_max
    ids = np.zeros((B, T), np.int32)
    pm = np.zeros((B, T), bool)
    ph = np.zeros((B, T), bool)
    pv = np.zeros((B, N, *tail), dtype)
    valid = np.zeros((B, N), bool)
    pm[:, 0] = True
    for b, (p, v) in enumerate(zip(prompts, passage_vecs)):
        L, n = len(p), len(v)
        ids[b, :L], pm[b, :L], ph[b, :L] = p.ids, True, p.placeholder
        pv[b, :n], valid[b, :n if n_valid is None else n_valid[b]] = v, True
    return ids, pm, ph, pv, valid
