"""Greedy text generation with the JAX decoder: one compiled function per
(batch, prompt bucket, max_new_tokens): prefill into a preallocated KV cache, then a
`lax.while_loop` that stops as soon as every row has emitted an end-of-sequence id.

What a long prompt costs (the text-listwise baseline's ~2,100-token windows):
- prompts are padded to `buckets.fine_bucket` (powers of two up to 1,024 tokens, then 1/8
  steps: 2,090 -> 2,304, not 3,072), so padding is at most an eighth of the prompt and a run
  compiles a handful of buckets;
- the cache holds exactly the bucket plus the generated tokens (nothing else to attend to);
- the prefill attends only over the prompt itself, in causal query blocks that skip the
  future (`Decoder.forward(..., prefill=True)`), never over the empty cache tail;
- each decoding step updates the cache in place (the layer scan carries it).

Used by the text-listwise baseline and by `perank generate`."""
from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.core.buckets import TraceCounter, fine_bucket
from perank_jax.models.decoder import init_cache
from perank_jax.listwise.prompts import render_chat


GENERATE_TRACES = TraceCounter()   # traces of the generation function, all decoders together


def prompt_bucket(n: int, min_bucket: int = 16) -> int:
    """The padded prompt length a prompt of n tokens compiles for."""
    return fine_bucket(n, min_bucket)


@lru_cache(maxsize=None)
def compiled_generate(graphdef):
    """The jitted generation function of one decoder structure (cached: one per graphdef)."""
    @partial(jax.jit, static_argnames=("max_new",))
    @GENERATE_TRACES.counted
    def run(state, ids, lengths, eos_ids, max_new: int):
        m = nnx.merge(graphdef, state)
        B, T = ids.shape
        # the prompt's T slots, then one per fed-back token (the last generated one never is)
        cache = init_cache(m.cfg, B, T + max_new - 1, m.dtype, mesh=m.mesh)
        pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        h, cache = m.forward(m.embed(ids), pos, pos < lengths[:, None], cache, prefill=True)
        last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)
        tok = jnp.argmax(m.head(last)[:, 0], axis=-1).astype(jnp.int32)
        out = jnp.zeros((B, max_new), jnp.int32).at[:, 0].set(tok)
        done = jnp.isin(tok, eos_ids)
        n_gen = jnp.ones((B,), jnp.int32)

        def cond(s):
            t, _, _, _, done, _ = s
            return (t < max_new) & ~jnp.all(done)

        def body(s):
            t, tok, cache, out, done, n_gen = s
            p = (lengths + t - 1)[:, None]
            h, cache = m.forward(m.embed(tok[:, None]), p, jnp.ones((B, 1), bool), cache)
            nxt = jnp.argmax(m.head(h)[:, 0], axis=-1).astype(jnp.int32)
            nxt = jnp.where(done, eos_ids[0], nxt)
            out = out.at[:, t].set(nxt)
            n_gen = n_gen + (~done).astype(jnp.int32)
            return t + 1, nxt, cache, out, done | jnp.isin(nxt, eos_ids), n_gen

        _, _, _, out, _, n_gen = jax.lax.while_loop(
            cond, body, (jnp.int32(1), tok, cache, out, done, n_gen))
        return out, n_gen

    return run


def pad_prompts(prompts: list[list[int]], pad_id: int = 0, min_bucket: int = 16):
    """(ids [B, bucket] right-padded, lengths [B]) for `greedy_generate`."""
    T = prompt_bucket(max(len(p) for p in prompts), min_bucket)
    ids = np.full((len(prompts), T), pad_id, np.int32)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = p
    return ids, np.array([len(p) for p in prompts], np.int32)


def greedy_generate(graphdef, state, prompts: list[list[int]], max_new_tokens: int,
                    eos_ids: list[int], pad_id: int = 0, min_bucket: int = 16):
    """Greedy continuation of each prompt (token id lists).

    Returns (tokens [B, max_new_tokens] np.int32, n_generated [B]); row b's generated
    tokens are tokens[b, :n_generated[b]] (the end-of-sequence id included when reached).
    Prompts are right-padded to a length bucket (`prompt_bucket`), so nothing recompiles
    per prompt length.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_generate: every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError("greedy_generate: max_new_tokens must be >= 1")
    if not eos_ids:
        raise ValueError("greedy_generate: eos_ids must name at least one token")
    ids, lengths = pad_prompts(prompts, pad_id, min_bucket)
    out, n = compiled_generate(graphdef)(state, ids, lengths, np.asarray(eos_ids, np.int32), max_new=int(max_new_tokens))
    return np.asarray(out), np.asarray(n)


def eos_ids_of(tokenizer, config=None) -> list[int]:
    ids = []
    for v in (getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if x is not None and int(x) not in ids:
                ids.append(int(x))
    if not ids:
        raise ValueError("the tokenizer/config names no end-of-sequence token")
    return ids


def chat_generate(model_path: str, prompt: str, max_new_tokens: int = 32, dtype: str = "float32") -> str:
    """Load a decoder, apply its chat template to one user turn, and decode greedily."""
    from perank_jax.weights.decoder import load_decoder
    dec = load_decoder(model_path, dtype=dtype)
    tok = dec.tokenizer
    if tok is None:
        raise ValueError(f"{model_path}: {dec.tokenizer_error or 'no tokenizer found next to the weights'}")
    text = render_chat(tok, prompt)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ctx = int(dec.config.max_position_embeddings)
    if len(ids) + max_new_tokens > ctx:     # past the position table the output would be garbage
        raise ValueError(f"the prompt is {len(ids)} tokens (with the chat template) and {max_new_tokens} new tokens "
                         f"were asked for, over the model's context of {ctx} tokens; shorten the prompt or "
                         "lower --max-new-tokens")
    out, n = greedy_generate(dec.graphdef, dec.state, [ids], max_new_tokens,
                             eos_ids_of(tok, dec.config), pad_id=tok.pad_token_id or 0)
    return tok.decode(out[0, :n[0]], skip_special_tokens=True)
