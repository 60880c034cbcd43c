"""Training losses for both PE-Rank stages (pure jnp, float32 throughout).

Stage 1 (alignment): next-token cross-entropy on the assistant-turn tokens only.

Stage 2 (listwise learning to rank), as in PERANK.md:
  logits L[B, n, n]: row j (teacher-forced step j) scores all n passages of the list.
  ListMLE (Plackett-Luce): at step j the target is the gold passage at rank j, and
  the softmax runs over the passages not yet ranked (those at gold ranks < j are
  masked with -1e9 in float32, as are padded passages).
  total = w1 * ListMLE(L1) + w2 * ListMLE(L2) + w_kl * KL(softmax(L2) || softmax(L1))
          + w_single * ListMLE(S1),
  the KL summed over steps and classes and divided by the batch size. S1 (an option, off in
  the paper's configs) repeats L1's FIRST row at every step: Plackett-Luce over the scores that
  single-pass ranking sorts by. ListMLE(L1) trains that row only to put the top passage first
  (its later rows see the passages already chosen); ListMLE(S1) trains it on the whole order.

Padding: a list with n_b < n passages has `valid[b, :n_b]` True (passages are the
first n_b slots), ranking[b, :n_b] a permutation of 0..n_b-1 and anything in
ranking[b, n_b:]; steps j >= n_b contribute nothing. A batch row with n_b == 0 (a
filler row) is not counted in the batch size.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from perank_jax.core.constants import MASKED, WEIGHTINGS




def ranking_masks(ranking: jax.Array, valid: jax.Array):
    """(allowed[B,n,n], step_valid[B,n], target_onehot[B,n,n]) for teacher-forced ListMLE.

    allowed[b, j, i]: passage i may be chosen at step j (real and not ranked before j).
    """
    n = ranking.shape[-1]
    n_b = valid.sum(-1)                                                    # [B]
    step_valid = jnp.arange(n)[None, :] < n_b[:, None]                     # [B, n]
    rank_idx = jnp.where(step_valid, ranking, n)                           # padded steps -> no passage
    onehot = jax.nn.one_hot(rank_idx, n, dtype=jnp.int32)                  # [B, step, passage]
    ranked_before = jnp.cumsum(onehot, axis=1) - onehot                    # exclusive cumsum over steps
    allowed = (ranked_before == 0) & valid[:, None, :]
    return allowed, step_valid, onehot.astype(jnp.float32)


def _num_lists(valid: jax.Array) -> jax.Array:
    return jnp.maximum((valid.sum(-1) > 0).sum(), 1).astype(jnp.float32)


def _step_weights(step_valid: jax.Array, weighting: str) -> jax.Array:
    """Per-step weights [B, n] whose per-list sum is the list's loss reduction."""
    sv = step_valid.astype(jnp.float32)
    if weighting == "mean":                       # reference: average over the list's steps
        return sv / jnp.maximum(sv.sum(-1, keepdims=True), 1.0)
    if weighting == "pow2":                       # earlier version: step j weighted 2^-j, summed
        return sv * jnp.exp2(-jnp.arange(sv.shape[-1], dtype=jnp.float32))[None, :]
    raise ValueError(f"unknown ListMLE weighting {weighting!r}; expected one of {WEIGHTINGS}")


def masked_log_softmax(logits: jax.Array, allowed: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(jnp.where(allowed, logits.astype(jnp.float32), MASKED), axis=-1)


def listmle(logits: jax.Array, ranking: jax.Array, valid: jax.Array, weighting: str = "mean") -> jax.Array:
    """Teacher-forced ListMLE averaged over the lists of the batch."""
    allowed, step_valid, target = ranking_masks(ranking, valid)
    logp = masked_log_softmax(logits, allowed)
    nll = -(logp * target).sum(-1)                                         # [B, n]
    per_list = (nll * _step_weights(step_valid, weighting)).sum(-1)        # [B]
    return per_list.sum() / _num_lists(valid)


def ranking_kl(teacher_logits: jax.Array, student_logits: jax.Array, ranking: jax.Array,
               valid: jax.Array) -> jax.Array:
    """KL(softmax(teacher) || softmax(student)) over the allowed passages of each valid step,
    summed over steps and classes, divided by the batch size."""
    allowed, step_valid, _ = ranking_masks(ranking, valid)
    lp_t = masked_log_softmax(teacher_logits, allowed)
    lp_s = masked_log_softmax(student_logits, allowed)
    keep = allowed & step_valid[:, :, None]
    kl = jnp.where(keep, jnp.exp(lp_t) * (lp_t - lp_s), 0.0)
    return kl.sum() / _num_lists(valid)


def stage2_loss(logits_wo: jax.Array, logits_w: jax.Array | None, ranking: jax.Array, valid: jax.Array,
                w1: float = 1.0, w2: float = 1.0, w_kl: float = 0.2, weighting: str = "mean",
                w_single: float = 0.0):
    """(total, metrics): loss1 on the embedding-only view L1 = logits_wo, loss2 on the
    with-content view L2 = logits_w (None: single-view training, loss2 = KL = 0), and with
    w_single > 0 the single-pass ListMLE of L1's first row (loss_single; see the module doc)."""
    zero = jnp.zeros((), jnp.float32)
    loss1 = listmle(logits_wo, ranking, valid, weighting)
    single = (listmle(jnp.broadcast_to(logits_wo[:, :1, :], logits_wo.shape), ranking, valid, weighting)
              if w_single else zero)
    total = w1 * loss1 + w_single * single
    if logits_w is None:
        return total, {"loss1": loss1, "loss2": zero, "kl": zero, "loss_single": single}
    loss2 = listmle(logits_w, ranking, valid, weighting)
    kl = ranking_kl(logits_w, logits_wo, ranking, valid)
    total = total + w2 * loss2 + w_kl * kl
    return total, {"loss1": loss1, "loss2": loss2, "kl": kl, "loss_single": single}


def next_token_xent(logits: jax.Array, targets: jax.Array, weights: jax.Array):
    """Mean cross-entropy over target tokens. logits[B,T,V] at position t predict targets[B,t]
    (already shifted: targets[:, t] is the token at t+1); weights[B,T] is 1 on assistant-turn
    targets, 0 elsewhere. Returns (mean loss, number of target tokens)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    w = weights.astype(jnp.float32)
    safe = jnp.where(w > 0, targets, 0).astype(jnp.int32)    # unweighted targets may be any id (e.g. added tokens)
    tok = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    count = w.sum()
    return jnp.where(w > 0, tok * w, 0.0).sum() / jnp.maximum(count, 1.0), count


def top1_accuracy(logits: jax.Array, ranking: jax.Array, valid: jax.Array) -> jax.Array:
    """Fraction of (non-filler) lists whose step-0 argmax over real passages is the gold top passage
    (random guessing scores 1/n_b)."""
    row = jnp.where(valid, logits[:, 0, :].astype(jnp.float32), MASKED)
    real = valid.sum(-1) > 0
    hit = (jnp.argmax(row, axis=-1) == ranking[:, 0]) & real
    return hit.sum() / jnp.maximum(real.sum(), 1)
