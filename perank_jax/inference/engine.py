"""DecodeEngine: batches of window prompts decoded by the compiled loop, one executable per bucket.

The engine owns everything between host-side window prompts and the order of each window:
padding to buckets (decode.pad_batch; prefix.pad_prefixes), splitting a batch's rows over the
mesh's "data" axis, compiling each padded shape once ahead of time (its seconds kept apart from
latency), the shared-prefix KV table, and turning scores into orders (decode.finish_order).

    engine = DecodeEngine(decoder, batch_size=16, length_bucket=64, passage_bucket=4, rules=None)
    kv = engine.prefill(plan.rows)                       the distinct shared prefixes, once per call
    perms = engine.decode(prompts, vecs, n_valid, top_k=None, mode="decode", min_n=20,
                          prefix=(kv, table_rows))       one order per window

`rules`: logical-axis rules ([[axis, mesh axis | null], ...] over perank_jax.core.sharding.RULES)
in force while the engine places a batch and traces its programs, as when the weights were placed.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from perank_jax.core.buckets import TraceCounter, round_up
from perank_jax.core.sharding import axis_rules, shard_rows
from perank_jax.inference.decode import finish_order, make_decode_fn, pad_batch
from perank_jax.inference.prefix import PrefixKV, make_prefix_fns, prefill_plan, prefixed_args


class DecodeEngine:
    def __init__(self, decoder, *, batch_size: int = 16, length_bucket: int = 64, passage_bucket: int = 4,
                 rules=None):
        """batch_size: windows decoded per call and per device of the mesh's "data" axis."""
        self.decoder = decoder          # perank_jax.weights.decoder.LoadedDecoder
        self.batch_size, self.length_bucket, self.passage_bucket = batch_size, length_bucket, passage_bucket
        self.rules = rules
        self.mesh = getattr(decoder.model, "mesh", None)
        self.data_size = int(self.mesh.shape.get("data", 1)) if self.mesh is not None else 1
        self.traces = TraceCounter()           # traces of the decode functions (one per decode bucket)
        self.prefix_traces = TraceCounter()    # traces of the shared-prefix prefill (one per prefix bucket)
        self._decode = make_decode_fn(decoder.graphdef, self.traces)
        self._prefill, self._decode_prefixed = make_prefix_fns(decoder.graphdef, self.traces, self.prefix_traces)
        self._compiled: dict = {}
        self.compile_s = 0.0       # compile seconds since the last `start_clock()`

    @property
    def rows_per_call(self) -> int:
        """Windows decoded by one call: batch_size per device of the "data" axis."""
        return self.batch_size * self.data_size

    @property
    def compile_count(self) -> int:
        """Decode executables compiled (one per decode bucket; shared-prefix prefills apart)."""
        return sum(1 for k in self._compiled if k[0] != "prefix")

    def start_clock(self) -> None:
        """Start counting compile seconds afresh (one rerank call's)."""
        self.compile_s = 0.0

    def batch_bucket(self, n: int) -> int:
        """Rows per call rounded up: a power of two, and a multiple of the mesh's data axis."""
        return round_up(1 << (max(n, 1) - 1).bit_length(), self.data_size)

    def _rules(self):
        return axis_rules(self.rules) if self.rules else contextlib.nullcontext()

    def _compile(self, key, fn, *args, **static):
        if key not in self._compiled:
            t = time.perf_counter()
            with self._rules():
                self._compiled[key] = fn.lower(*args, **static).compile()
            self.compile_s += time.perf_counter() - t
        return self._compiled[key]

    def prefill(self, rows: list[np.ndarray]) -> PrefixKV:
        """The KV table of the distinct shared prefixes `rows` (prefix.PrefixPlan.rows), prefilled once."""
        with self._rules():
            return prefill_plan(self._prefill, self._compile, self.decoder.state, rows,
                                length_bucket=self.length_bucket, batch_bucket=self.batch_bucket(len(rows)),
                                mesh=self.mesh)

    def decode(self, prompts, passage_vecs, n_valid, *, top_k=None, mode: str = "decode", min_n: int = 0,
               prefix=None) -> list[list[int]]:
        """Decode one batch of windows (at most rows_per_call): row b ranks its first n_valid[b]
        vectors (a query slot after them is never a candidate); N is padded to at least `min_n` (the
        window size, so the shorter last window of a sliding rerank reuses the same compilation).
        With prefix=(PrefixKV, table row per prompt), `prompts` are the remainders after the prefix."""
        B = self.batch_bucket(len(prompts))
        arrays = pad_batch(prompts, passage_vecs, length_bucket=self.length_bucket,
                           passage_bucket=self.passage_bucket, batch_bucket=B, min_passages=min_n,
                           dtype=np.dtype(self.decoder.model.dtype), n_valid=n_valid)
        N = arrays[3].shape[1]
        steps = N if (mode == "single_pass" or top_k is None) else min(top_k, N)
        with self._rules():
            if prefix is None:
                args = shard_rows(arrays, self.mesh)
                key, fn = ("whole", arrays[0].shape, N, steps, mode), self._decode
            else:
                kv, table_rows = prefix
                args = prefixed_args(kv, table_rows, arrays, self.mesh)
                key, fn = ("shared", kv.pos.shape, arrays[0].shape, N, steps, mode), self._decode_prefixed
        run = self._compile(key, fn, self.decoder.state, *args, steps=steps, mode=mode)
        chosen, first = run(self.decoder.state, *args)
        chosen, first = np.asarray(chosen), np.asarray(first)
        return [finish_order(chosen[b], n, top_k, mode, first[b], b) for b, n in enumerate(n_valid)]
