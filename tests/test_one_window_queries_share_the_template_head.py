"""A call of one window per query shares the prompt's template head, and ranks as whole prompts do.

A server batch is many top-20 queries of one window each: a query's own prefix would be used once,
so the plan (inference/prefix.py) prefills the template head (the tokens before the query) in one
table row and each window feeds its query and the rest. Checked on a tiny model: rankings equal
whole prompts in every mode and both templates; the table holds one row; token accounting does not
depend on the plan; `share_prefix="head"` (the server's) feeds whole prompts whenever the head does
not apply; the planner's cut never passes a prompt's first placeholder; the head is made once per
window size without filling the prompt cache; the policy names (`perank serve --share-prefix`) are
exactly the settings the ranker takes.
"""
from __future__ import annotations

import numpy as np
import pytest

from fixtures import hash_ranker, ranker_variant
from perank_jax.inference.prefix import plan_prefixes
from perank_jax.listwise.prompts import TokenizedPrompt

QUERIES = ["cats and dogs", "money in river banks", "a piano in the city court of law", "fish", "x"]
LISTS = [[f"passage {q} {i} about {w}" for i, w in enumerate("cats dogs fish birds trees music".split())]
         for q in range(len(QUERIES))]


def table_rows(ranker, monkeypatch) -> list:
    """Records the number of prefix-table rows each rerank call prefills (none: whole prompts)."""
    seen, real = [], ranker.engine.prefill
    monkeypatch.setattr(ranker.engine, "prefill", lambda rows: seen.append(len(rows)) or real(rows))
    return seen


@pytest.fixture(scope="module")
def base(tiny_perank_dir_32):
    return hash_ranker(tiny_perank_dir_32, batch_size=8)


@pytest.mark.parametrize("template,query_token", [("paper", False), ("compact", True)])
def test_one_window_queries_rank_as_whole_prompts_from_one_head_row(base, template, query_token, monkeypatch):
    whole = ranker_variant(base, template, query_token, False)
    for share in (True, "head"):
        shared = ranker_variant(base, template, query_token, share)
        rows = table_rows(shared, monkeypatch)
        modes = [dict(mode="decode"), dict(mode="decode", top_k=2)] + ([dict(mode="single_pass")] if query_token
                                                                        else [])
        for kw in modes:
            got = shared.rerank_batch(QUERIES, LISTS, window=6, stride=3, **kw)
            assert got == whole.rerank_batch(QUERIES, LISTS, window=6, stride=3, **kw), (share, kw)
            for q, s, w in zip(QUERIES, shared.last_stats, whole.last_stats):   # counted as with its own prefix
                assert s.processed_tokens == w.processed_tokens
                assert s.prefix_tokens == int(shared.tokenized_prompt(q, 6).placeholder.argmax())
        assert rows == [1] * len(modes), share                          # one head row for all 5 queries
        head = shared.template_head(6)
        assert 0 < len(head) < min(int(shared.tokenized_prompt(q, 6).placeholder.argmax()) for q in QUERIES)
        assert all((shared.tokenized_prompt(q, 6).ids[:len(head)] == head).all() for q in QUERIES)


def test_the_head_applies_only_to_one_window_per_query_of_one_size(base, monkeypatch):
    own, head, whole = (ranker_variant(base, "compact", True, s) for s in (True, "head", False))
    own_rows, head_rows = table_rows(own, monkeypatch), table_rows(head, monkeypatch)
    mixed = [LISTS[0][:-1]] + LISTS[1:]                                  # sizes 5 and 6: two heads
    calls = [(QUERIES[:1], LISTS[:1], {}), (QUERIES, mixed, {}), (QUERIES, LISTS, dict(window=4, stride=2))]
    for queries, lists, kw in calls:
        kw = kw or dict(window=6, stride=3)
        want = whole.rerank_batch(queries, lists, mode="single_pass", **kw)
        assert own.rerank_batch(queries, lists, mode="single_pass", **kw) == want
        assert head.rerank_batch(queries, lists, mode="single_pass", **kw) == want
    # own prefixes: one row per query (and window size); the head mode fed whole prompts every time
    assert own_rows == [1, len(QUERIES), len(QUERIES)] and head_rows == []


def test_the_plan_cuts_at_the_head_never_past_a_placeholder_and_counts_alike():
    P = 9                                                                # the placeholder id

    def prompt(ids):
        ids = np.asarray(ids, np.int32)
        return TokenizedPrompt(ids, ids == P)
    head = np.asarray([1, 2, 3, 4], np.int32)
    prompts = {(0, 2): prompt([1, 2, 3, 4, 5, 9, 9, 7]),                 # query 5
               (1, 2): prompt([1, 2, 3, 4, 6, 6, 9, 9, 7]),              # query 6 6
               (2, 2): prompt([1, 2, 9, 9, 7]),                          # leaves the head at its placeholder
               (3, 2): prompt([1, 2, 3, 8, 9, 9, 7])}                    # leaves the head early (a merged token)
    uses = dict.fromkeys(prompts, 1)
    common = plan_prefixes(prompts, uses, lambda n: head)
    assert common.common and [r.tolist() for r in common.rows] == [[1, 2, 3, 4], [1, 2], [1, 2, 3]]
    assert [common.row_of[k] for k in prompts] == [0, 0, 1, 2]
    for key, p in prompts.items():                                       # row + remainder = the prompt
        joined = np.concatenate([common.rows[common.row_of[key]], common.remainder[key].ids])
        assert joined.tolist() == p.ids.tolist()
        assert common.remainder[key].placeholder.sum() == 2
    own = plan_prefixes(prompts, uses)                                   # no head: each query's own prefix
    assert not own.common and [len(r) for r in own.rows] == [5, 6, 2, 4]
    assert common.prefix_tokens(4) == own.prefix_tokens(4) == [5, 6, 2, 4]
    assert [common.counted(k) for k in prompts] == [own.counted(k) for k in prompts] == [3, 3, 3, 3]
    assert plan_prefixes(prompts, {**uses, (0, 2): 2}, lambda n: head).common is False   # a query's 2 windows
    assert plan_prefixes(prompts, {**uses, (0, 2): 2}, lambda n: head, own_rows=False) is None
    assert plan_prefixes({(0, 2): prompts[0, 2]}, {(0, 2): 1}, lambda n: head, own_rows=False) is None


def test_each_prefix_policy_name_is_a_setting_the_ranker_takes_and_others_are_refused(base):
    from perank_jax.core import SHARE_PREFIX
    assert set(SHARE_PREFIX) == {"all", "head", "off"}
    for value in SHARE_PREFIX.values():
        assert ranker_variant(base, "compact", True, value).share_prefix == value
    with pytest.raises(ValueError, match=r"share_prefix must be one of .*all, head, off.*got 'both'"):
        ranker_variant(base, "compact", True, "both")


def test_the_template_head_is_made_once_per_size_and_its_probe_prompts_stay_out_of_the_prompt_cache(base,
                                                                                                 monkeypatch):
    r = ranker_variant(base, "compact", True, "head")
    made, real = [], r.tokenize
    monkeypatch.setattr(r, "tokenize", lambda q, n: made.append((q, n)) or real(q, n))
    head = r.template_head(6)
    assert r.template_head(6) is head and made == [("a", 6), ("b", 6)]     # two probes, once per size
    probe = r.tokenized_prompt("a", 6)
    assert made[-1] == ("a", 6) and len(made) == 3          # the probe was not in the prompt cache: made again
    assert r.tokenized_prompt("a", 6) is probe and len(made) == 3          # ...and cached from now on
    assert (probe.ids[:len(head)] == head).all()
