"""The stage-2 loss equals a direct numpy transcription of PERANK.md's formula (loops, float64),
for both step weightings and for batches of padded lists; the stage-1 loss counts only
assistant-turn targets."""
import numpy as np
import jax.numpy as jnp
import pytest

from perank_jax.train.losses import next_token_xent, stage2_loss, top1_accuracy


def _log_softmax(x):
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def np_stage2(L1, L2, rankings, lengths, w1, w2, wkl, weighting):
    """Literal transcription: for each list, each step j, softmax over the passages not yet ranked."""
    lists = [b for b in range(len(lengths)) if lengths[b] > 0]
    loss1 = loss2 = kl = 0.0
    for b in lists:
        nb = lengths[b]
        for L, acc in ((L1, 1), (L2, 2)):
            per_step = []
            for j in range(nb):
                remaining = [i for i in range(nb) if i not in rankings[b][:j]]
                lp = _log_softmax(np.array([L[b, j, i] for i in remaining], np.float64))
                per_step.append(-lp[remaining.index(rankings[b][j])])
            if weighting == "mean":
                v = np.mean(per_step)
            else:
                v = sum(2.0 ** -j * x for j, x in enumerate(per_step))
            if acc == 1:
                loss1 += v
            else:
                loss2 += v
        for j in range(nb):
            remaining = [i for i in range(nb) if i not in rankings[b][:j]]
            lp2 = _log_softmax(np.array([L2[b, j, i] for i in remaining], np.float64))
            lp1 = _log_softmax(np.array([L1[b, j, i] for i in remaining], np.float64))
            kl += float(np.sum(np.exp(lp2) * (lp2 - lp1)))
    B = len(lists)
    loss1, loss2, kl = loss1 / B, loss2 / B, kl / B
    return w1 * loss1 + w2 * loss2 + wkl * kl, loss1, loss2, kl


@pytest.mark.parametrize("weighting", ["mean", "pow2"])
@pytest.mark.parametrize("lengths", [[6, 6, 6], [6, 3, 0, 5]])
def test_stage2_loss_equals_numpy_transcription(weighting, lengths):
    rng = np.random.default_rng(len(lengths) * 10 + (weighting == "pow2"))
    n, B = 6, len(lengths)
    L1 = rng.normal(size=(B, n, n)).astype(np.float32) * 3
    L2 = rng.normal(size=(B, n, n)).astype(np.float32) * 3
    rankings = [list(rng.permutation(nb)) for nb in lengths]
    ranking = np.full((B, n), 0, np.int32)
    valid = np.zeros((B, n), bool)
    for b, nb in enumerate(lengths):
        ranking[b, :nb] = rankings[b]
        ranking[b, nb:] = rng.integers(0, n, n - nb)   # garbage in padded steps must not matter
        valid[b, :nb] = True
        L1[b, :, nb:] = 1e4                            # huge logits on padded passages must not matter
    w1, w2, wkl = 1.0, 0.7, 0.2
    want = np_stage2(L1, L2, rankings, lengths, w1, w2, wkl, weighting)
    total, m = stage2_loss(jnp.asarray(L1), jnp.asarray(L2), jnp.asarray(ranking), jnp.asarray(valid),
                           w1=w1, w2=w2, w_kl=wkl, weighting=weighting)
    got = (float(total), float(m["loss1"]), float(m["loss2"]), float(m["kl"]))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)
    assert want[3] > 0.1  # the KL term is really exercised


def np_single_pass(L1, rankings, lengths, weighting):
    """Plackett-Luce of the order under the FIRST step's scores only: at step j, softmax of
    L1[b, 0, .] over the passages not yet ranked."""
    lists = [b for b in range(len(lengths)) if lengths[b] > 0]
    total = 0.0
    for b in lists:
        per_step = []
        for j in range(lengths[b]):
            remaining = [i for i in range(lengths[b]) if i not in rankings[b][:j]]
            lp = _log_softmax(np.array([L1[b, 0, i] for i in remaining], np.float64))
            per_step.append(-lp[remaining.index(rankings[b][j])])
        total += np.mean(per_step) if weighting == "mean" else sum(2.0 ** -j * x for j, x in enumerate(per_step))
    return total / len(lists)


@pytest.mark.parametrize("weighting", ["mean", "pow2"])
@pytest.mark.parametrize("with_content", [False, True])
def test_single_pass_listmle_term_equals_numpy_transcription(weighting, with_content):
    rng = np.random.default_rng(7 + with_content)
    lengths, n = [6, 4, 0], 6
    B = len(lengths)
    L1 = rng.normal(size=(B, n, n)).astype(np.float32) * 3
    L2 = rng.normal(size=(B, n, n)).astype(np.float32) * 3
    rankings = [list(rng.permutation(nb)) for nb in lengths]
    ranking = np.zeros((B, n), np.int32)
    valid = np.zeros((B, n), bool)
    for b, nb in enumerate(lengths):
        ranking[b, :nb] = rankings[b]
        valid[b, :nb] = True
    args = (jnp.asarray(L1), jnp.asarray(L2) if with_content else None, jnp.asarray(ranking), jnp.asarray(valid))
    base, _ = stage2_loss(*args, weighting=weighting)
    total, m = stage2_loss(*args, weighting=weighting, w_single=0.5)
    want = np_single_pass(L1, rankings, lengths, weighting)
    np.testing.assert_allclose(float(m["loss_single"]), want, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(float(total), float(base) + 0.5 * want, rtol=2e-5, atol=1e-5)
    L1[:, 1:] = rng.normal(size=(B, n - 1, n)) * 3    # the teacher-forced later rows: only loss1 moves
    _, m2 = stage2_loss(jnp.asarray(L1), *args[1:], weighting=weighting, w_single=0.5)
    assert float(m2["loss_single"]) == float(m["loss_single"]) and abs(float(m2["loss1"]) - float(m["loss1"])) > 0.01


def test_stage2_loss_is_finite_and_differentiable_with_masked_logits():
    import jax
    n = 4
    L = jnp.zeros((1, n, n))
    valid = jnp.array([[True, True, True, False]])
    ranking = jnp.array([[2, 0, 1, 0]])   # 3 real passages; step 3 is padding
    g = jax.grad(lambda a, b: stage2_loss(a, b, ranking, valid)[0], argnums=(0, 1))(L, L + 1.0)
    assert all(bool(jnp.isfinite(x).all()) for x in g)
    # masked passages (padded passage 3, and already-ranked ones) receive no gradient
    assert float(jnp.abs(g[0][0, :, 3]).max()) == 0.0
    assert float(jnp.abs(g[0][0, 1, 2])) == 0.0


def test_next_token_xent_counts_only_assistant_targets():
    rng = np.random.default_rng(0)
    B, T, V = 2, 5, 7
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    targets = rng.integers(0, V, (B, T))
    weights = np.zeros((B, T), np.float32)
    weights[0, 2:4] = 1
    weights[1, 1] = 1
    loss, count = next_token_xent(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    terms = [-_log_softmax(logits[b, t].astype(np.float64))[targets[b, t]]
             for b in range(B) for t in range(T) if weights[b, t]]
    np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-6)
    assert int(count) == 3


def test_top1_accuracy_ignores_padded_passages_and_filler_lists():
    L = np.zeros((3, 3, 3), np.float32)
    L[0, 0] = [0, 5, 9]          # passage 2 is padding: the argmax among real ones is 1
    L[1, 0] = [7, 0, 0]
    ranking = np.array([[1, 0, 0], [2, 1, 0], [0, 0, 0]])
    valid = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]], bool)
    assert float(top1_accuracy(jnp.asarray(L), jnp.asarray(ranking), jnp.asarray(valid))) == 0.5


def test_next_token_xent_ignores_out_of_vocabulary_ids_at_unweighted_positions():
    logits = jnp.zeros((1, 3, 4))
    targets = jnp.array([[1, 99, 2]])          # 99: e.g. <PLACEHOLDER> added after the vocabulary
    loss, _ = next_token_xent(logits, targets, jnp.array([[1.0, 0.0, 1.0]]))
    np.testing.assert_allclose(float(loss), np.log(4.0), rtol=1e-6)
