"""Metrics equal hand-computed trec_eval values; paired tests; `perank evaluate`; the data README's numbers."""
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from perank_jax.cli import main
from perank_jax.data.trec import read_qrels, read_run
from perank_jax.data.trec_write import write_qrels, write_run
from perank_jax.evaluate.metrics import evaluate, paired_test, parse_measures

DATA = Path("/work/shared/data")
L2 = math.log2


def test_ndcg_recall_rr_equal_hand_values_with_unjudged_and_nonrelevant_docs():
    qrels = {"q": {"a": 3, "b": 1, "c": 0, "e": 2}}
    run = {"q": ["c", "a", "x", "b"]}  # c judged 0, x unjudged, e never retrieved
    e = evaluate(qrels, run, ["nDCG@1", "nDCG@3", "nDCG@10", "R@20", "MRR@10"])
    idcg = 3 / L2(2) + 2 / L2(3) + 1 / L2(4)
    v = e.per_query["q"]
    assert v["nDCG@1"] == 0.0
    assert v["nDCG@3"] == pytest.approx((3 / L2(3)) / idcg, abs=1e-9)
    assert v["nDCG@10"] == pytest.approx((3 / L2(3) + 1 / L2(5)) / idcg, abs=1e-9)
    assert v["R@20"] == pytest.approx(2 / 3)
    assert v["MRR@10"] == pytest.approx(1 / 2)


def test_tied_scores_break_by_docid_descending_like_trec_eval():
    qrels = {"t": {"a": 1}}
    e = evaluate(qrels, {"t": {"a": 1.0, "b": 1.0, "0": 1.0}}, ["nDCG@10", "RR@10"])
    # trec_eval order for ties: b, a, 0 -> the relevant "a" is at rank 2
    assert e.per_query["t"]["nDCG@10"] == pytest.approx(1 / L2(3), abs=1e-9)
    assert e.per_query["t"]["RR@10"] == pytest.approx(0.5)
    assert evaluate(qrels, {"t": ["a", "b", "0"]}, ["nDCG@10"]).per_query["t"]["nDCG@10"] == 1.0


def test_missing_judged_queries_count_zero_unless_skipped():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"z": 1}}
    run = {"q1": ["a"], "q2": ["x", "b"], "unjudged": ["a"]}
    c = evaluate(qrels, run, ["nDCG@10"])  # ir_measures / trec_eval -c
    assert sorted(c.per_query) == ["q1", "q2", "q3"] and c.missing == ["q3"]
    assert c.aggregate["nDCG@10"] == pytest.approx((1 + 1 / L2(3)) / 3)
    e = evaluate(qrels, run, ["nDCG@10"], complete=False)
    assert sorted(e.per_query) == ["q1", "q2"]
    assert e.aggregate["nDCG@10"] == pytest.approx((1 + 1 / L2(3)) / 2)


def test_unknown_measure_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown measure 'nDGC@10'"):
        parse_measures(["nDGC@10"])


def _evals(xs, ys):
    qrels = {f"q{i}": {"rel": 1} for i in range(len(xs))}
    mk = lambda vals: {f"q{i}": [f"n{j}" for j in range(r - 1)] + ["rel"] for i, r in enumerate(vals)}
    return evaluate(qrels, mk(xs), ["RR@10"]), evaluate(qrels, mk(ys), ["RR@10"])


def test_paired_t_test_matches_the_formula():
    from scipy import stats
    a, b = _evals([1, 2, 3, 1, 5, 2], [1, 1, 2, 1, 1, 3])  # ranks of the relevant doc
    t = paired_test(a, b, "RR@10", "t")
    d = np.array([b.per_query[q]["RR@10"] - a.per_query[q]["RR@10"] for q in sorted(a.per_query)])
    tstat = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert t.p_value == pytest.approx(2 * stats.t.sf(abs(tstat), len(d) - 1), rel=1e-9)
    assert t.n == 6 and t.delta == pytest.approx(d.mean())


def test_randomization_test_approaches_the_exact_sign_flip_p_value():
    a, b = _evals([2, 3, 1, 4, 2], [1, 1, 2, 1, 1])
    d = np.array([b.per_query[q]["RR@10"] - a.per_query[q]["RR@10"] for q in sorted(a.per_query)])
    flips = np.array(list(itertools.product([-1, 1], repeat=len(d))))
    exact = np.mean(np.abs((flips * d).mean(1)) >= abs(d.mean()) - 1e-12)
    got = paired_test(a, b, "RR@10", "randomization", n_resamples=20000).p_value
    assert got == pytest.approx(exact, abs=0.02)
    assert paired_test(a, a, "RR@10", "randomization").p_value == 1.0


def test_evaluate_cli_prints_table_and_rejects_bad_files(tmp_path, capsys):
    q = write_qrels({"q": {"a": 1, "b": 2}}, tmp_path / "qrels.txt")
    r1 = write_run({"q": ["a", "x", "b"]}, tmp_path / "r1.trec")
    r2 = write_run({"q": ["b", "a"]}, tmp_path / "r2.trec")
    assert main(["evaluate", "--qrels", str(q), "--run", str(r1), "--run2", str(r2),
                 "--measures", "nDCG@10", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    idcg = 2 + 1 / L2(3)
    assert f"| nDCG@10 | {(1 + 2 / L2(4)) / idcg:.4f} | 1.0000 |" in out
    assert (tmp_path / "e.json").exists()
    assert main(["evaluate", "--qrels", str(r1), "--run", str(r1)]) == 2
    assert f"{r1}:1:" in capsys.readouterr().err


README_NDCG10 = [("dl20/qrels.txt", "dl20/run.bm25.top100.txt", 0.4796),
                 ("dl20/qrels.txt", "dl20/run.bm25rm3.top100.txt", 0.4896),
                 ("dl20/qrels.txt", "dl20/run.tasb.top100.txt", 0.6854),
                 ("dl20/qrels.txt", "dl20/run.ada2.top100.txt", 0.6759),
                 ("dl20/qrels.txt", "dl20/run.splade_pp_ed.top100.txt", 0.7197),
                 ("scifact/qrels.test.txt", "scifact/run.bm25.test.top100.txt", 0.6762),
                 ("nfcorpus/qrels.test.txt", "nfcorpus/run.bm25.test.top100.txt", 0.3329)]


@pytest.mark.skipif(not DATA.is_dir(), reason="shared data not present")
@pytest.mark.parametrize("qrels,run,expected", README_NDCG10)
def test_shipped_first_stage_runs_give_the_readme_ndcg10(qrels, run, expected):
    e = evaluate(read_qrels(DATA / qrels), read_run(DATA / run), ["nDCG@10", "R@100"])
    assert round(e.aggregate["nDCG@10"], 4) == expected
    if "scifact" in run:
        assert round(e.aggregate["R@100"], 4) == 0.9127
