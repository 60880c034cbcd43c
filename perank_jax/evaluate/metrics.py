"""Ranking metrics with ir_measures (trec_eval semantics through pytrec_eval) and paired tests.

trec_eval semantics: a run is ranked by score (descending), ties broken by docid in
decreasing lexical order; nDCG uses linear gains (the grade) and a log2(rank+1) discount
with the ideal ranking built from every judged document of the query; unjudged documents
gain 0; queries without judgements are ignored. By default, as ir_measures does (and
trec_eval -c, which the reference used), judged queries missing from the run count as 0;
`complete=False` averages only over the judged queries the run answers (trec_eval without -c).

Runs may be given as {qid: {docid: score}}, {qid: [Hit]} (scores used as read), or
{qid: [docid, ...]} best first (scores n..1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import ir_measures
import numpy as np

DEFAULT_MEASURES = ("nDCG@1", "nDCG@5", "nDCG@10", "nDCG@20", "R@20", "R@100", "RR@10")
_ALIASES = {"MRR": "RR"}
MAX_CUTOFF = 2**31 - 1          # a C int inside pytrec_eval


def parse_measures(names: Sequence[str] = DEFAULT_MEASURES) -> list:
    """ir_measures measure objects from names like "nDCG@10", "MRR@10" (= RR@10), "R(rel=2)@100"."""
    out = []
    for n in names:
        base, sep, rest = n.partition("@")
        for a, b in _ALIASES.items():
            if base == a or base.startswith(a + "("):
                base = b + base[len(a):]
        try:
            m = ir_measures.parse_measure(base + sep + rest)
        except (ValueError, NameError, SyntaxError, TypeError) as e:
            raise ValueError(f"unknown measure {n!r} ({e})") from None
        cutoff = m.params.get("cutoff")   # checked here: pytrec_eval aborts the process on a cutoff of 0
        if cutoff is not None and not (isinstance(cutoff, int) and not isinstance(cutoff, bool)
                                       and 1 <= cutoff <= MAX_CUTOFF):
            raise ValueError(f"measure {n!r}: the cutoff after @ must be an integer in [1, {MAX_CUTOFF}], "
                             f"got {cutoff!r}")
        out.append(m)
    return out


def run_scores(run: Mapping) -> dict[str, dict[str, float]]:
    """{qid: {docid: score}} from any of the accepted run shapes."""
    out = {}
    for qid, entries in run.items():
        if isinstance(entries, Mapping):
            out[str(qid)] = {str(d): float(s) for d, s in entries.items()}
            continue
        entries = list(entries)
        n, scores = len(entries), {}
        for i, e in enumerate(entries):
            docid, score = (e, float(n - i)) if isinstance(e, str) else (e.docid, float(e.score))
            scores[docid] = score
        out[str(qid)] = scores
    return out


@dataclass
class Evaluation:
    measures: list[str]
    per_query: dict[str, dict[str, float]]           # qid -> measure -> value
    aggregate: dict[str, float] = field(default_factory=dict)
    n_queries: int = 0
    missing: list[str] = field(default_factory=list)  # judged queries absent from the run

    def values(self, measure: str) -> dict[str, float]:
        return {q: m[measure] for q, m in self.per_query.items()}


def evaluate(qrels: Mapping, run: Mapping, measures: Sequence[str] = DEFAULT_MEASURES,
             complete: bool = True) -> Evaluation:
    """Per-query and mean values of `measures` for `run` against `qrels` ({qid: {docid: grade}})."""
    names = list(measures)
    parsed = parse_measures(names)
    qrels = {str(q): {str(d): int(g) for d, g in j.items()} for q, j in qrels.items() if j}
    scores = {q: s for q, s in run_scores(run).items() if q in qrels and s}
    missing = sorted(q for q in qrels if q not in scores)
    kept = sorted(qrels) if complete else sorted(scores)
    per_query: dict[str, dict[str, float]] = {q: {n: 0.0 for n in names} for q in kept}
    by_measure = {m: n for m, n in zip(parsed, names)}
    if scores:
        for r in ir_measures.iter_calc(parsed, qrels, scores):
            if r.query_id in per_query:
                per_query[r.query_id][by_measure[r.measure]] = float(r.value)
    aggregate = {n: (float(np.mean([v[n] for v in per_query.values()])) if per_query else math.nan)
                 for n in names}
    return Evaluation(names, per_query, aggregate, len(per_query), missing)


@dataclass
class PairedTest:
    measure: str
    method: str
    n: int
    mean_a: float
    mean_b: float
    p_value: float

    @property
    def delta(self) -> float:
        return self.mean_b - self.mean_a


def paired_test(a: Evaluation, b: Evaluation, measure: str, method: str = "t",
                n_resamples: int = 10000, seed: int = 0) -> PairedTest:
    """Two-sided paired test of b vs a on `measure` over the queries both evaluated:
    method "t" (scipy paired t-test) or "randomization" (sign flips of the differences)."""
    common = sorted(set(a.per_query) & set(b.per_query))
    if not common:
        raise ValueError("the two runs share no evaluated query; cannot pair them")
    x = np.array([a.per_query[q][measure] for q in common])
    y = np.array([b.per_query[q][measure] for q in common])
    d = y - x
    if np.allclose(d, 0.0):
        p = 1.0
    elif method == "t":
        from scipy import stats
        if len(d) < 2:
            p = math.nan  # undefined with one pair
        elif np.allclose(d, d[0]):
            p = 0.0  # a constant non-zero difference: no variance left
        else:
            p = float(stats.ttest_rel(y, x).pvalue)
    elif method == "randomization":
        rng = np.random.default_rng(seed)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, len(d)))
        null = np.abs((signs * d).mean(axis=1))
        p = float((np.sum(null >= abs(d.mean()) - 1e-12) + 1) / (n_resamples + 1))
    else:
        raise ValueError(f"unknown test {method!r}: use 't' or 'randomization'")
    return PairedTest(measure, method, len(common), float(x.mean()), float(y.mean()), p)


def format_table(evals: Mapping[str, Evaluation], tests: Sequence[PairedTest] = ()) -> str:
    """A markdown table: one row per measure, one column per run (+ delta and p when tested)."""
    names = next(iter(evals.values())).measures
    by_measure = {t.measure: t for t in tests}
    head = ["measure", *evals] + (["delta", f"p ({tests[0].method})"] if tests else [])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [n] + [f"{e.aggregate[n]:.4f}" for e in evals.values()]
        if tests:
            t = by_measure.get(n)
            cells += [f"{t.delta:+.4f}", f"{t.p_value:.4g}"] if t else ["", ""]
        rows.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{k}: {e.n_queries} queries" + (f" ({len(e.missing)} judged queries missing)"
                                                          if e.missing else "") for k, e in evals.items())
    return "\n".join(rows) + f"\n\n{counts}"
