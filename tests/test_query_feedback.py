"""The candidate-aware query vector (perank_jax.listwise.feedback):

- `feedback_query` equals a plain per-element loop of its formula; weight 0 is the normalised query,
  and a cold temperature adds the single candidate nearest the query;
- a PE-Rank checkpoint with a query token feeds the feedback vector, projected and times the query
  scale, into the query's slot; the `query_feedback=` override ranks as a checkpoint whose config.json
  has those settings, and differs from no feedback;
- the evaluation's cosine method with `query_feedback` ranks by the feedback vector;
- bad settings are one clear error (ValueError from the API, exit 2 with one line from `perank tables`).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from fixtures import HashEncoder, edited_checkpoint, hash_ranker
from perank_jax.listwise.feedback import check_feedback, feedback_query


def _reference(q, e, weight, temperature):
    """The formula written out element by element, in Python floats."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]
    q, e = unit(list(map(float, q))), [unit(list(map(float, r))) for r in e]
    s = [sum(a * b for a, b in zip(q, r)) / temperature for r in e]
    top = max(s)
    w = [math.exp(x - top) for x in s]
    z = sum(w)
    out = [q[j] + weight * sum(w[i] / z * e[i][j] for i in range(len(e))) for j in range(len(q))]
    return unit(out)


@pytest.mark.parametrize("weight,temperature", [(1.0, 0.01), (0.5, 0.02), (2.0, 1.0)])
def test_feedback_query_equals_a_plain_loop_of_its_formula(weight, temperature):
    rng = np.random.default_rng(0)
    q, e = rng.normal(size=16) * 3, rng.normal(size=(9, 16)) * rng.uniform(0.5, 2, size=(9, 1))
    got = feedback_query(q, e, weight, temperature)
    np.testing.assert_allclose(got, _reference(q, e, weight, temperature), rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32 and abs(np.linalg.norm(got) - 1) < 1e-5


def test_weight_zero_is_the_query_and_a_cold_temperature_adds_the_nearest_candidate():
    rng = np.random.default_rng(1)
    q, e = rng.normal(size=8), rng.normal(size=(5, 8))
    unit = lambda v: v / np.linalg.norm(v)                                            # noqa: E731
    np.testing.assert_allclose(feedback_query(q, e, 0.0, 0.01), unit(q), rtol=1e-6)
    np.testing.assert_allclose(feedback_query(q, e[:0], 1.0, 0.01), unit(q), rtol=1e-6)
    nearest = int(np.argmax([unit(r) @ unit(q) for r in e]))
    np.testing.assert_allclose(feedback_query(q, e, 1.0, 1e-6), unit(unit(q) + unit(e[nearest])), rtol=1e-5)


@pytest.mark.parametrize("weight,temperature,bad", [(-1, 0.01, "weight"), (float("nan"), 0.01, "weight"),
                                                    (1, 0, "temperature"), (1, float("inf"), "temperature")])
def test_bad_feedback_settings_are_one_value_error_naming_the_setting(weight, temperature, bad):
    with pytest.raises(ValueError, match=f"query feedback {bad}"):
        check_feedback(weight, temperature)


def test_the_query_slot_holds_the_projected_feedback_vector_and_the_override_equals_the_config(tiny_perank_dir_32, tmp_path):
    from perank_jax.models.projector import project
    plain_dir = edited_checkpoint(tiny_perank_dir_32, tmp_path / "plain", query_token=True, query_scale=10.0)
    fb_dir = edited_checkpoint(tiny_perank_dir_32, tmp_path / "fb", query_token=True, query_scale=10.0,
                         query_feedback_weight=1.0, query_feedback_temperature=0.05)
    overridden, configured, plain = hash_ranker(plain_dir, query_feedback=(1.0, 0.05)), hash_ranker(fb_dir), hash_ranker(plain_dir)
    assert overridden.feedback == configured.feedback == (1.0, 0.05) and plain.feedback[0] == 0
    passages = [f"passage {i} about {w}" for i, w in enumerate("cats dogs fish birds trees rivers pianos".split())]
    query = "dogs and cats"
    (rows,), _ = configured.slots([passages], [query])
    enc = HashEncoder(32).encode(passages + [query])
    want = np.asarray(project(configured._proj_graph, configured._proj_state,
                              feedback_query(enc[-1], enc[:-1], 1.0, 0.05)[None]))[0] * 10.0
    np.testing.assert_allclose(rows[-1], want, rtol=1e-5, atol=1e-5)
    (plain_rows,), _ = plain.slots([passages], [query])
    np.testing.assert_allclose(plain_rows[:-1], rows[:-1], rtol=1e-6)       # passages unchanged
    assert not np.allclose(plain_rows[-1], rows[-1])
    lists = [passages, passages[::-1][:5]]
    for mode in ("single_pass", "decode"):
        got = overridden.rerank_batch([query, "rivers"], lists, window=4, stride=2, mode=mode)
        assert got == configured.rerank_batch([query, "rivers"], lists, window=4, stride=2, mode=mode)
    saved = hash_ranker(configured.save_pretrained(tmp_path / "saved"))                     # kept by save_pretrained
    assert saved.feedback == (1.0, 0.05) and saved.query_scale == 10.0
    assert "query_feedback_weight" not in json.loads(plain.save_pretrained(tmp_path / "p").joinpath(
        "config.json").read_text())
    with pytest.raises(ValueError, match="query_feedback_temperature must be > 0"):
        hash_ranker(plain_dir, query_feedback=(1.0, 0.0))
    with pytest.raises(ValueError, match="applies only to a checkpoint with a query token"):
        hash_ranker(tiny_perank_dir_32, query_feedback=(1.0, 0.01))


def test_cosine_with_feedback_ranks_by_the_feedback_vector(minilm_dir):
    from perank_jax.data.trec import Candidate
    from perank_jax.evaluate.tables import MethodSpec, Methods, TablesConfig
    from perank_jax.weights.encoder import load_encoder
    texts = ["Paris is the capital of France.", "The Eiffel Tower is in Paris.", "Bananas are yellow fruit.",
             "French cuisine includes bread and cheese.", "The Louvre museum is in Paris, France.",
             "Volcanoes erupt lava.", "Berlin is the capital of Germany."]
    cands = [Candidate(f"d{i}", 0.0, t) for i, t in enumerate(texts)]
    query = "what is the capital city of france"
    spec = MethodSpec(name="fb", kind="embedding", encoder=str(minilm_dir), max_length=256,
                      query_feedback=[1.0, 0.02])
    methods = Methods(TablesConfig(datasets=[], methods=[spec]))
    order, _ = methods.build(spec)(query, cands)
    enc = load_encoder(minilm_dir, max_length=256).encode(texts + [query])
    qv = feedback_query(enc[-1], enc[:-1], 1.0, 0.02)
    assert order == [int(i) for i in np.argsort(-(enc[:-1] @ qv), kind="stable")]
    assert order[0] == 0                                                     # the answer stays first


def test_tables_refuses_feedback_on_the_wrong_method_or_with_bad_values(tmp_path, capsys):
    from perank_jax.cli import main
    p = tmp_path / "t.yaml"
    ds = [{"name": "x", "qrels": "q.txt", "requests": "r.jsonl"}]
    for method, msg in (({"name": "bm", "kind": "first_stage", "query_feedback": [1, 0.01]},
                         "methods[0] (bm): query_feedback needs kind embedding, or perank with a `checkpoint`"),
                        ({"name": "cos", "kind": "embedding", "encoder": "e", "query_feedback": [1]},
                         "methods[0].query_feedback must be [weight, temperature], got [1.0]"),
                        ({"name": "cos", "kind": "embedding", "encoder": "e", "query_feedback": [1, -2]},
                         "methods[0].query_feedback[1] must be > 0 and <= 1e+06, got -2.0")):
        p.write_text(yaml.safe_dump({"datasets": ds, "methods": [method]}))
        assert main(["tables", str(p)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
