"""The compiled scan decoder (KV cache, one lax.scan, batched + padded) gives exactly the
rankings of a naive reference: no cache, the whole sequence recomputed every step, a
Python loop over steps, argmax over the passages not yet emitted."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fixtures import tiny_decoder
from perank_jax.core.buckets import TraceCounter
from perank_jax.inference.decode import finish_order, make_decode_fn

C, T, N, D, V = 240, 24, 8, 32, 64


def _cases(seed):
    """C random windows: prompt ids, prompt length, placeholder positions, passages (some duplicated)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, (C, T)).astype(np.int32)
    pm = np.zeros((C, T), bool)
    ph = np.zeros((C, T), bool)
    valid = np.zeros((C, N), bool)
    pv = rng.normal(size=(C, N, D)).astype(np.float32)
    for c in range(C):
        n = int(rng.integers(1, N + 1))
        L = int(rng.integers(n + 1, T + 1))
        pm[c, :L] = True
        ph[c, np.sort(rng.choice(L - 1, n, replace=False))] = True  # last token is never a placeholder
        valid[c, :n] = True
        if c % 5 == 0 and n > 1:  # identical passages -> exact ties
            pv[c, n - 1] = pv[c, 0]
    return ids, pm, ph, pv, valid


def _naive(model, ids, pm, ph, pv, valid):
    """Per step: rebuild [prompt, chosen...] for every case, full forward without cache."""
    fwd = jax.jit(lambda x, pos, mask: model.forward(x, pos, mask)[0])
    emb = np.asarray(model.embedding[...])
    lengths = pm.sum(1)
    n = valid.sum(1)
    S = T + N
    base = np.zeros((C, S, D), np.float32)
    for c in range(C):
        base[c, :lengths[c]] = emb[ids[c, :lengths[c]]]
        for k, t in enumerate(np.flatnonzero(ph[c])):
            base[c, t] = pv[c, k]
    chosen = [[] for _ in range(C)]
    first = None
    for step in range(N):
        x = base.copy()
        mask = np.zeros((C, S), bool)
        for c in range(C):
            L = lengths[c] + len(chosen[c])
            for j, i in enumerate(chosen[c]):
                x[c, lengths[c] + j] = pv[c, i]
            mask[c, :L] = True
        pos = np.broadcast_to(np.arange(S, dtype=np.int32), (C, S))
        h = np.asarray(fwd(jnp.asarray(x), jnp.asarray(pos), jnp.asarray(mask)))
        for c in range(C):
            if len(chosen[c]) >= n[c]:
                continue
            hc = h[c, lengths[c] + len(chosen[c]) - 1]
            scores = (pv[c, :n[c]].astype(np.float64) * hc.astype(np.float64)).sum(-1)
            if step == 0:
                first = first if first is not None else np.zeros((C, N), np.float32)
                first[c, :n[c]] = scores
            scores[chosen[c]] = -np.inf
            chosen[c].append(int(np.argmax(scores)))
    return chosen, first


@pytest.fixture(scope="module")
def setup():
    model = tiny_decoder(seed=1)
    cases = _cases(0)
    return model, cases, _naive(model, *cases)


def test_scan_decode_equals_naive_reference_on_240_cases(setup):
    model, (ids, pm, ph, pv, valid), (want, _) = setup
    g, s = nnx.split(model)
    traces = TraceCounter()
    f = make_decode_fn(g, traces)
    got = []
    for lo in range(0, C, 60):  # batches of 60 windows, one compilation
        sl = slice(lo, lo + 60)
        chosen, _ = f(s, ids[sl], pm[sl], ph[sl], pv[sl], valid[sl], steps=N, mode="decode")
        chosen = np.asarray(chosen)
        got += [finish_order(chosen[b], int(valid[sl][b].sum()), None, "decode") for b in range(len(chosen))]
    assert traces.count == 1
    mismatches = [c for c in range(C) if got[c] != want[c]]
    assert not mismatches, f"{len(mismatches)} cases differ, e.g. case {mismatches[0]}: {got[mismatches[0]]} vs {want[mismatches[0]]}"


def test_top_k_and_single_pass_equal_the_naive_reference(setup):
    model, (ids, pm, ph, pv, valid), (want, first) = setup
    g, s = nnx.split(model)
    traces = TraceCounter()
    f = make_decode_fn(g, traces)
    k = 3
    top, _ = f(s, ids, pm, ph, pv, valid, steps=k, mode="decode")
    single, scores = f(s, ids, pm, ph, pv, valid, steps=N, mode="single_pass")
    top, single, scores = np.asarray(top), np.asarray(single), np.asarray(scores)
    for c in range(C):
        n = int(valid[c].sum())
        head = want[c][:k]
        assert finish_order(top[c], n, k, "decode") == head + [i for i in range(n) if i not in head]
        np.testing.assert_allclose(scores[c, :n], first[c, :n], rtol=1e-4, atol=1e-4)
        assert finish_order(single[c], n, None, "single_pass") == sorted(range(n), key=lambda i: -scores[c, i])
        assert finish_order(single[c], n, None, "single_pass")[0] == want[c][0]
