"""Properties of PERanker.rerank / rerank_batch on a tiny random checkpoint: the output is
always a permutation of the query's candidates (n=1, ties, identical passages, padded
batches, windows that do not divide n, top_k, single_pass); identical passages keep their
first-stage order; nothing recompiles across passage counts within a bucket."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fixtures import HashEncoder
from perank_jax.inference.ranker import PERanker


WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta"]


@pytest.fixture(scope="module")
def ranker(tiny_perank_dir_32):
    return PERanker.from_pretrained(tiny_perank_dir_32, encoder=HashEncoder(32), length_bucket=256,
                                    passage_bucket=8, batch_size=2)


passage = st.sampled_from(WORDS).map(lambda w: f"text {w}")          # few distinct texts -> many duplicates
plist = st.lists(passage, min_size=1, max_size=19)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lists=st.lists(plist, min_size=1, max_size=3), window=st.sampled_from([None, 3, 5, 8]),
       stride_frac=st.sampled_from([1, 2]), top_k=st.sampled_from([None, 2]),
       mode=st.sampled_from(["decode", "decode", "single_pass"]))
def test_rerank_is_a_permutation_and_keeps_duplicates_in_order(ranker, lists, window, stride_frac, top_k, mode):
    if window is None and max(len(p) for p in lists) > 8:
        window = 8
    stride = max(1, (window or 8) // stride_frac)
    top_k = None if mode == "single_pass" else top_k        # refused there: one pass ranks every passage
    orders = ranker.rerank_batch([f"query {i}" for i in range(len(lists))], lists, window=window,
                                 stride=stride, top_k=top_k, mode=mode)
    for ps, order in zip(lists, orders):
        assert sorted(order) == list(range(len(ps)))
        for text in set(ps):   # identical passages tie exactly; ties keep first-stage order
            positions = [i for i in order if ps[i] == text]
            assert positions == sorted(positions)
    for ps, stats in zip(lists, ranker.last_stats):
        assert stats.n_passages == len(ps) and stats.processed_tokens > len(ps)


def test_single_passage_and_batch_padding_agree_with_single_queries(ranker):
    lists = [["text alpha"], ["text beta", "text gamma", "text delta"], ["text eps", "text zeta"]]
    batched = ranker.rerank_batch(["q a", "q b", "q c"], lists)
    single = [ranker.rerank(q, ps) for q, ps in zip(["q a", "q b", "q c"], lists)]
    assert batched == single and batched[0] == [0]


def test_no_recompilation_across_passage_counts_within_a_bucket(tiny_perank_dir_32):
    r = PERanker.from_pretrained(tiny_perank_dir_32, encoder=HashEncoder(32), length_bucket=512,
                                 passage_bucket=8, batch_size=1)
    for n in (5, 8, 6, 7, 5):
        r.rerank(f"query with {n} passages", [f"p {i}" for i in range(n)])
    assert r.compile_count == 1
    assert r.traces.count == 1                   # the decode function was traced once
    r.rerank("another query", [f"p {i}" for i in range(9)])   # next passage bucket: one more
    assert r.compile_count == 2


def test_accounting_counts_prompt_tokens_over_windows_and_decode_steps(ranker):
    ps = [f"text {w} {i}" for i, w in enumerate(WORDS * 2)]          # n = 12
    ranker.rerank("q", ps, window=5, stride=3)
    st_ = ranker.last_stats[0]
    from perank_jax.listwise.windows import sliding_windows
    wins = sliding_windows(12, 5, 3)
    assert st_.windows == len(wins)
    assert st_.generated_tokens == sum(e - s for s, e in wins)
    prompts = [ranker.tokenized_prompt("q", e - s) for s, e in wins]
    prefix = {e - s: int(p.placeholder.argmax()) for (s, e), p in zip(wins, prompts)}   # per window size
    assert st_.processed_tokens == sum(len(p) for p in prompts) - sum(prefix[e - s] for s, e in wins) \
        + sum(prefix.values())                        # the shared prefix is prefilled once per query
    assert st_.prefix_tokens == sum(prefix.values())
    ranker.share_prefix = False
    try:
        ranker.rerank("q", ps, window=5, stride=3)    # whole prompts: every window counts its prefix
        assert ranker.last_stats[0].processed_tokens == sum(len(p) for p in prompts)
    finally:
        ranker.share_prefix = True
    ranker.rerank("q", ps, window=5, stride=3, top_k=2)
    assert ranker.last_stats[0].generated_tokens == 2 * len(wins)
    assert ranker.last_stats[0].latency_s > 0 and ranker.last_stats[0].compile_s >= 0


def test_save_pretrained_round_trips_to_the_same_rankings(ranker, tmp_path):
    out = ranker.save_pretrained(tmp_path / "ck")
    again = PERanker.from_pretrained(out, encoder=HashEncoder(32), length_bucket=256, passage_bucket=8,
                                     batch_size=2)
    ps = [f"text {w} {i}" for i, w in enumerate(WORDS)]
    assert again.rerank("round trip", ps) == ranker.rerank("round trip", ps)
    assert again.config["model_type"] == "mistral" and again.config["projector_type"] == "mlp2x_gelu"
    for k, v in ranker.projector.export_torch().items():
        assert (again.projector.export_torch()[k] == v).all()


def test_shared_embedding_memo_encodes_each_text_once_and_changes_no_ranking(tiny_perank_dir_32):
    class Counting(HashEncoder):
        seen: list = []

        def encode(self, texts, batch_size=32):
            self.seen.extend(texts)
            return super().encode(texts, batch_size)
    enc = Counting(32)
    r = PERanker.from_pretrained(tiny_perank_dir_32, encoder=enc, length_bucket=256, passage_bucket=8)
    lists = [[f"text {w}" for w in WORDS], [f"text {w}" for w in reversed(WORDS)]]
    plain = [r.rerank_batch(["q a", "q b"], lists, window=4, stride=2, mode=m) for m in ("decode", "single_pass")]
    enc.seen.clear()
    r.embedding_memo = {}
    memo = [r.rerank_batch(["q a", "q b"], lists, window=4, stride=2, mode=m) for m in ("decode", "single_pass")]
    assert memo == plain
    assert sorted(enc.seen) == sorted({t for ps in lists for t in ps})
