"""Rerank accounting: XLA compile time is measured (jax.monitoring) and kept out of latency."""
import time

import jax
import jax.numpy as jnp

from perank_jax.evaluate.accounting import Usage, summarize, timed


def test_compile_time_is_reported_apart_from_latency():
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0))
    x = jnp.ones((48, 48))

    def call(v):
        return f(v).block_until_ready(), Usage(processed_tokens=7, generated_tokens=3, windows=2)

    t0 = time.perf_counter()
    _, first = timed("q1", 20, call, x)
    wall = time.perf_counter() - t0
    _, second = timed("q2", 20, call, x)
    assert first.compile_s > 0 and second.compile_s == 0
    assert first.latency_s <= wall - first.compile_s + 1e-3
    assert (first.processed_tokens, first.generated_tokens, first.windows, first.n_candidates) == (7, 3, 2, 20)
    s = summarize([first, second])
    assert s["queries"] == 2 and s["processed_tokens"] == 7 and s["compile_s_total"] == first.compile_s
