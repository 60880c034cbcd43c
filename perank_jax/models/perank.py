"""The PE-Rank model maths, one copy for training and decoding: slots -> prompt embeddings -> rank logits.

A list of n passages (plus, with a query token, the query's own slot right after them) is
projected into slots `e [B, n, k, H]`: k LLM input vectors per slot (`projector.tokens_per_passage`).
Everything both sides compute from them lives here:

  list_inputs      host: a list's encoder rows and the query vector the projector sees
  project_lists    [B, n, E] (+ the query [B, E]) -> e [B, n, k, H] through `models.projector.project`
  scale_query_slot the query slot's vectors times query_scale
  embed_prompt     the prompt's token embeddings with its placeholders replaced by e, k per slot
  passage_keys     one vector per slot: the mean of its k vectors. A passage's score at a constrained
                   step is h . key (= the mean of its k logits h . e_ij), and the vector fed (or
                   teacher-forced) after choosing it is its key: one output token per passage.
  rank_inputs      the keys of chosen passages (the decode step's input, training's <RANK> slots)
  passage_scores   decoding: h . key_i in float32, masked
  rank_logits / listwise_logits / hidden_states: training's teacher-forced view of the same maths

With k = 1 the key is the passage's one vector and every function reduces to PE-Rank's.
docs/method.md says why the mean.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from perank_jax.core.constants import MASKED
from perank_jax.listwise.feedback import feedback_query
from perank_jax.models.projector import project
from perank_jax.listwise.prompts import merge_placeholders


# --- host side: what goes into the projector ------------------------------------------------------
def list_inputs(passages: np.ndarray, query: np.ndarray | None, *, slot: bool,
                feedback: tuple[float, float] = (0.0, 1.0)) -> tuple[np.ndarray, np.ndarray | None]:
    """One list's encoder vectors as the model consumes them: (rows [n (+1), E], query vector [E] or None).

    passages [n, E]; query [E] (the query's encoder vector) or None. The query vector is the
    candidate-aware one (perank_jax.listwise.feedback) when the list has a query slot and feedback weight > 0,
    else the query's own vector. It is THE query vector: it fills the query slot (row n, when
    `slot`) and it is what a projector with `uses_query` receives, in training and at inference."""
    passages = np.asarray(passages, np.float32)
    if query is None:
        if slot:
            raise ValueError("a list with a query slot needs the query's vector")
        return passages, None
    q = np.asarray(query, np.float32)
    if slot and feedback[0] > 0:
        q = feedback_query(q, passages, *feedback)
    rows = np.concatenate([passages, q[None]]) if slot else passages
    return rows, q


def project_lists(graphdef, state, emb, query=None):
    """emb [B, n, E] (and query [B, E], the list's query vector, or None) -> e [B, n, k, H].
    Every row of a list is projected with that list's query vector (for projectors with `uses_query`)."""
    B, n, E = emb.shape
    q = None if query is None else jnp.broadcast_to(query[:, None, :], (B, n, query.shape[-1])).reshape(B * n, -1)
    out = project(graphdef, state, emb.reshape(B * n, E), q)
    return out.reshape(B, n, *out.shape[1:])


def scale_query_slot(e, valid, scale: float):
    """Multiply the query's slot (row n_b, right after a list's n_b passages) of projected slots
    e [B, n, ...] by `scale`. The query opens the answer, so at scale >> 1 the residual stream of the
    position that picks the first passage starts from the query and h . e_i begins as a similarity.
    numpy arrays (inference, one shape per doc count) stay on the host; jax arrays (training, in jit) don't."""
    if scale == 1.0:
        return e
    xp = np if isinstance(e, np.ndarray) else jnp          # numpy in: computed on the host, nothing compiled
    slot = xp.arange(e.shape[1])[None, :] == valid.sum(-1)[:, None]
    slot = slot.reshape(slot.shape + (1,) * (e.ndim - 2))
    return xp.where(slot, e * xp.asarray(scale, e.dtype), e)


# --- the prompt -----------------------------------------------------------------------------------
def as_slots(e):
    """[B, n, H] (one vector per slot) -> [B, n, 1, H]; [B, n, k, H] unchanged."""
    return e[:, :, None, :] if e.ndim == 3 else e


def prompt_vectors(e):
    """e [B, n, k, H] -> [B, n * k, H]: the vectors of the prompt's placeholders, in prompt order."""
    e = as_slots(e)
    B, n, k, H = e.shape
    return e.reshape(B, n * k, H)


def embed_prompt(model, ids, ph_mask, e):
    """The prompt's input embeddings [B, T, H]: tokens embedded, the c-th placeholder of row b
    replaced by prompt_vectors(e)[b, c] (k consecutive placeholders per slot)."""
    x = model.embed(jnp.where(ph_mask, 0, ids))
    return merge_placeholders(x, ph_mask, prompt_vectors(e).astype(x.dtype))


def passage_keys(e):
    """e [B, n, k, H] -> [B, n, H]: a slot's key, the mean of its k vectors (computed in float32)."""
    e = as_slots(e)
    if e.shape[2] == 1:
        return e[:, :, 0]
    return e.astype(jnp.float32).mean(axis=2).astype(e.dtype)


def rank_inputs(keys, idx):
    """keys [B, n, H], idx [B, m] -> [B, m, H]: what is fed after choosing passages idx."""
    return jnp.take_along_axis(keys, idx[..., None], axis=1)


def passage_scores(h, keys, available):
    """Decoding: h [B, H], keys [B, N, H], available [B, N] bool -> float32 [B, N] (MASKED where unavailable)."""
    s = jnp.einsum("bd,bnd->bn", h.astype(jnp.float32), keys.astype(jnp.float32))
    return jnp.where(available, s, MASKED)


# --- training: the teacher-forced view ------------------------------------------------------------
def positions_mask(pos, T):
    """pos [B, m] positions (T or more = none) -> [B, T] bool."""
    B = pos.shape[0]
    return jnp.zeros((B, T), bool).at[jnp.arange(B)[:, None], pos].set(True, mode="drop")


def hidden_states(model, e, ids, mask, ph_pos, rank_pos=None, ranking=None):
    """Final hidden states of one training prompt view: placeholders (ph_pos, k per slot) take the
    projected slots, teacher-forced <RANK> slots (rank_pos) the keys of the gold passages in ranking order."""
    T = ids.shape[1]
    x = embed_prompt(model, ids, positions_mask(ph_pos, T), e)
    if rank_pos is not None:
        ranked = rank_inputs(passage_keys(e), ranking)
        x = merge_placeholders(x, positions_mask(rank_pos, T), ranked.astype(x.dtype))
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    h, _ = model.forward(x, positions, mask)
    return h


def rank_logits(h, keys, rank_pos):
    """L[b, j, i] = h(state before <RANK> slot j) . key_i, in float32 (decoding's passage_scores, unmasked)."""
    idx = jnp.clip(rank_pos - 1, 0, h.shape[1] - 1)
    rows = jnp.take_along_axis(h, idx[..., None], axis=1)
    return jnp.einsum("bnd,bmd->bnm", rows, keys.astype(rows.dtype), preferred_element_type=jnp.float32)


def listwise_logits(model, e, batch, view: str = "wo"):
    """L[b, j, i] of one prompt view ("wo": embedding-only, "w": with content) with teacher-forced
    <RANK> slots; e [B, n, k, H] (or [B, n, H]) are the projected slots (plus the query's, if any)."""
    p = view + "_"
    h = hidden_states(model, e, batch[p + "ids"], batch[p + "mask"], batch[p + "ph_pos"], batch[p + "rank_pos"],
                      batch["ranking"])
    return rank_logits(h, passage_keys(e), batch[p + "rank_pos"])

