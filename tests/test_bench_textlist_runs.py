"""tools/bench_textlist.py runs end to end on a tiny random model: JAX and HF generate the same
tokens from the same text-listwise prompts, and the table has a row per query plus the median."""
from perank_jax.data.trec import Candidate, Request

from helpers_tools import load_tool

bench = load_tool("bench_textlist")


def test_textlist_latency_compares_jax_and_hf_tokens_on_same_prompts(tiny_mistral_dir):
    passages = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota", "kappa"]
    reqs = [Request(str(q), f"query number {q}", [Candidate(str(i), 1.0, t) for i, t in enumerate(passages)])
            for q in range(2)]
    rows = bench.textlist_latency(reqs, depth=3, max_new_tokens=5, hf_dir=tiny_mistral_dir, repeats=2)
    assert [r.qid for r in rows] == ["0", "1"]
    for r in rows:
        assert r.first_diff is None and r.jax_generated == r.hf_generated >= 1
        assert r.prompt_tokens <= r.bucket and r.jax_s > 0 and r.hf_s > 0 and r.ratio > 0
    assert rows[1].compile_s == 0.0                 # same bucket: compiled once
    table = bench.format_table(rows).splitlines()
    assert len(table) == 2 + len(rows) + 1 and table[-1].startswith("| median |")
    assert bench.first_difference([1, 2, 3], [1, 5, 3]) == 1 and bench.first_difference([1, 2], [1, 2, 3]) == 2
