"""`DenseEncoder`: text -> pooled (optionally L2-normalised) embeddings with a Flax `Encoder`.

Texts are tokenised with the model's own HF tokenizer (from the same directory, never remote
code), truncated to `max_length`, sorted by length and cut into batches of a FIXED size; each
batch is right-padded to the smallest length bucket that fits it (powers of two from 16 and
their 1.5x midpoints, and `max_length`), and the last batch is filled with empty rows. So the
jitted forward compiles at most once per bucket, and padding (masked keys, masked pooling)
never changes an embedding.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.core.buckets import TraceCounter, length_buckets, smallest_fitting
from perank_jax.core.constants import ENCODER_MAX_LENGTH
from perank_jax.models.encoder import Encoder, EncoderConfig, EncoderError
from perank_jax.models.pooling import POOLINGS, l2_normalize, pool



class DenseEncoder:
    """Frozen dense encoder: `.encode(texts, batch_size=32) -> np.ndarray [N, dim] float32`."""

    def __init__(self, config: EncoderConfig, model: Encoder, tokenizer, *, pooling: str = "mean",
                 normalize: bool = True, max_length: int = ENCODER_MAX_LENGTH, path: str = "", name: str = ""):
        if pooling not in POOLINGS:
            raise EncoderError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        if not isinstance(max_length, int) or max_length < 2:
            raise EncoderError(f"max_length must be an integer >= 2, got {max_length!r}")
        if config.max_tokens is not None and max_length > config.max_tokens:
            raise EncoderError(f"max_length={max_length} exceeds what the {config.arch} position table "
                               f"supports ({config.max_tokens} tokens)")
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.pooling, self.normalize, self.max_length = pooling, bool(normalize), max_length
        self.path, self.name = path, name or config.name or path
        self.dim = config.hidden_size
        self.buckets = length_buckets(max_length)
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        self.pad_id = config.pad_token_id if pad is None else int(pad)
        self.traces = TraceCounter()    # traces of the pooled forward (one per bucket used)
        self.truncated = 0              # texts cut at max_length so far (callers report it once)
        graphdef, self._state = nnx.split(model)

        def pooled(state, ids, mask):
            h = nnx.merge(graphdef, state)(ids, mask)
            e = pool(h, mask, self.pooling)
            return l2_normalize(e) if self.normalize else e

        def hidden(state, ids, mask):
            return nnx.merge(graphdef, state)(ids, mask).astype(jnp.float32)

        self._pooled = jax.jit(self.traces.counted(pooled))
        self._hidden = jax.jit(hidden)

    # ----------------------------------------------------------------- tokens
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise EncoderError("encode() takes a list of texts, got a single string")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise EncoderError(f"text {i} is a {type(t).__name__}, not a string")
            if not t.strip():
                raise EncoderError(f"text {i} is empty (an empty passage has no embedding)")
        if not texts:
            return []
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             add_special_tokens=True)
        ids = [list(x) for x in enc["input_ids"]]
        full = [i for i, x in enumerate(ids) if len(x) >= self.max_length]    # at the limit: cut?
        if full:
            whole = self.tokenizer([texts[i] for i in full], truncation=False, add_special_tokens=True,
                                   verbose=False)
            self.truncated += sum(len(x) > self.max_length for x in whole["input_ids"])
        return ids

    def bucket(self, n: int) -> int:
        return smallest_fitting(n, self.buckets)

    def _batches(self, ids: list[list[int]], batch_size: int):
        """Yield (row indices, ids [batch_size, T], mask) in ascending-length order."""
        order = np.argsort([len(x) for x in ids], kind="stable")
        for s in range(0, len(order), batch_size):
            rows = order[s: s + batch_size]
            T = self.bucket(max(len(ids[r]) for r in rows))
            arr = np.full((batch_size, T), self.pad_id, np.int32)
            mask = np.zeros((batch_size, T), bool)
            for j, r in enumerate(rows):
                arr[j, : len(ids[r])] = ids[r]
                mask[j, : len(ids[r])] = True
            yield rows, arr, mask

    # ----------------------------------------------------------------- encode
    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Pooled embeddings [N, dim] float32, in the order of `texts`."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise EncoderError(f"batch_size must be a positive integer, got {batch_size!r}")
        ids = self.tokenize(texts)
        out = np.zeros((len(ids), self.dim), np.float32)
        batches = self._batches(ids, batch_size)
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, total=-(-len(ids) // batch_size), desc="encode", unit="batch")
        for rows, arr, mask in batches:
            e = self._pooled(self._state, jnp.asarray(arr), jnp.asarray(mask))
            out[rows] = np.asarray(e)[: len(rows)]
        return out

    def hidden_states(self, input_ids, attention_mask) -> np.ndarray:
        """Last hidden states [B, T, D] float32 for right-padded token ids (no bucketing)."""
        ids = jnp.asarray(np.asarray(input_ids), jnp.int32)
        mask = jnp.asarray(np.asarray(attention_mask)).astype(bool)
        return np.asarray(self._hidden(self._state, ids, mask))

    def __repr__(self):
        return (f"DenseEncoder({self.config.arch}, name={self.name!r}, dim={self.dim}, "
                f"pooling={self.pooling}, normalize={self.normalize}, max_length={self.max_length})")
