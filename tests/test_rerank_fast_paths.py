"""The inference fast paths change no ranking:

- precomputed embeddings: passages looked up by docid in a `perank encode` cache rank exactly as
  when encoded (tiny PE-Rank + the packaged all-MiniLM-L6-v2); missing ones are encoded on the fly
  and counted; encoding time is ~0 with a full cache; a cache of another encoder or settings is
  one EmbeddingMismatch (a ValueError; `perank rerank --embeddings` exits 2 with one line);
- data parallel: on an (8,1,1) and a (2,4,1) mesh of the 8 fake CPU devices the rows of a batch
  are split over the "data" axis and the rankings equal one device's, compiled once per bucket;
- shared prefix: prefilling a query's prompt prefix once and each window's remainder on top of
  it ranks as whole prompts do (both templates, with and without the query token, every mode),
  `processed_tokens` counts the prefix once, and nothing recompiles per query.
The same equality on the real SmolLM2 + MiniLM shipped model is marked slow.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures import edited_checkpoint, hash_ranker, ranker_variant
from perank_jax.cli import main
from perank_jax.data.embcache_build import build_embedding_cache
from perank_jax.inference.passage_vectors import EmbeddingMismatch
from perank_jax.inference.ranker import PERanker
from perank_jax.core.sharding import make_mesh

TOPICS = "cats dogs rivers banks loans trees music pianos courts cities fish birds".split()
DOCS = {f"d{i}": f"document {i} is about {w} and {TOPICS[(i * 5) % len(TOPICS)]}" for i, w in
        enumerate(TOPICS * 2)}                                                  # 24 documents
QUERIES = ["cats and dogs", "money in river banks", "a piano in the city court of law", "fish"]


def _lists(n=(11, 24, 7, 16)):
    ids = list(DOCS)
    return [[ids[(3 * q + k) % len(ids)] for k in range(m)] for q, m in enumerate(n)]


# ------------------------------------------------------------------ precomputed embeddings
@pytest.fixture(scope="module")
def cached(tmp_path_factory, tiny_perank_dir):
    root = tmp_path_factory.mktemp("fast_cache")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in DOCS.items()))
    ranker = PERanker.from_pretrained(tiny_perank_dir, batch_size=4)
    cache = build_embedding_cache(ranker.encoder, corpus, root / "cache", batch_size=8, progress=False)
    return ranker, root, corpus, cache, tiny_perank_dir


def test_cached_embeddings_rank_as_encoding_and_skip_the_encoder(cached):
    ranker, _, _, cache, _ = cached
    ids = _lists()
    texts = [[DOCS[d] for d in q] for q in ids]
    ranker.use_embeddings(None)
    plain = ranker.rerank_batch(QUERIES, texts, window=6, stride=3, docids=ids)
    plain_stats = ranker.last_stats
    assert [s.encoded_on_the_fly for s in plain_stats] == [len(q) for q in ids]
    ranker.use_embeddings(cache)
    try:
        fast = ranker.rerank_batch(QUERIES, texts, window=6, stride=3, docids=ids)
        stats = ranker.last_stats
        # the vectors themselves: the cache holds what the encoder gives
        looked_up = ranker.embeddings.lookup(ids[1])
        np.testing.assert_allclose(looked_up, ranker.encoder.encode(texts[1]), atol=1e-5)
    finally:
        ranker.use_embeddings(None)
    assert fast == plain
    assert [s.from_cache for s in stats] == [len(q) for q in ids] and all(s.encoded_on_the_fly == 0 for s in stats)
    assert all(s.encode_s < 0.05 for s in stats)                        # ~0: a memory-mapped look-up
    assert sum(s.encode_s for s in stats) < sum(s.encode_s for s in plain_stats)
    for s in stats + plain_stats:
        assert s.latency_no_encode_s == pytest.approx(s.latency_s - s.encode_s)
        assert 0 < s.latency_no_encode_s <= s.latency_s


def test_passages_missing_from_the_cache_are_encoded_and_counted(cached):
    ranker, _, _, cache, _ = cached
    texts = [DOCS[d] for d in _lists()[0]] + ["a new document about cats that no cache holds"]
    ids = _lists()[0] + ["new-1"]
    want = ranker.rerank(QUERIES[0], texts, window=5, stride=2)        # no cache, no docids
    ranker.use_embeddings(cache)
    try:
        got = ranker.rerank(QUERIES[0], [{"docid": d, "text": t} for d, t in zip(ids, texts)], window=5, stride=2)
        st = ranker.last_stats[0]
        assert (st.from_cache, st.encoded_on_the_fly) == (len(ids) - 1, 1)
        assert ranker.rerank(QUERIES[0], texts, window=5, stride=2) == want     # plain texts: no docids
        assert ranker.last_stats[0].encoded_on_the_fly == len(texts)
    finally:
        ranker.use_embeddings(None)
    assert got == want


def test_a_cache_of_another_encoder_or_settings_is_refused(cached, tmp_path, minilm_dir):
    import perank_jax
    from fixtures import tiny_bert
    ranker, root, corpus, _, _ = cached
    short = build_embedding_cache(perank_jax.load_encoder(minilm_dir, max_length=64), corpus, tmp_path / "short",
                                  progress=False)
    with pytest.raises(EmbeddingMismatch, match=r"max_length 64, the ranker uses 512.*perank encode"):
        ranker.use_embeddings(short)
    tiny_bert(tmp_path / "tiny", minilm_dir)
    other = build_embedding_cache(tmp_path / "tiny", corpus, tmp_path / "other", max_length=64, progress=False)
    with pytest.raises(ValueError, match=r"dimension 32, the projector expects 384.*made by encoder"):
        ranker.use_embeddings(other)
    assert ranker.embeddings is None


def _requests_file(path, ids):
    path.write_text("".join(json.dumps({"query": {"text": q, "qid": f"q{i}"},
                                        "candidates": [{"docid": d, "score": 1.0 - k / 100, "doc": {"text": DOCS[d]}}
                                                       for k, d in enumerate(c)]}) + "\n"
                            for i, (q, c) in enumerate(zip(QUERIES, ids))))
    return path


def test_cli_rerank_with_embeddings_matches_encoding_and_refuses_a_mismatch(cached, tmp_path, capsys, minilm_dir):
    import perank_jax
    _, _, corpus, cache, ckpt = cached
    req = _requests_file(tmp_path / "req.jsonl", _lists())
    base = ["rerank", "--model", str(ckpt), "--requests", str(req), "--window", "6", "--stride", "3",
            "--batch-queries", "2"]
    assert main(base + ["--out", str(tmp_path / "plain.trec")]) == 0
    assert main(base + ["--out", str(tmp_path / "fast.trec"), "--embeddings", str(cache)]) == 0
    assert (tmp_path / "plain.trec").read_text() == (tmp_path / "fast.trec").read_text()
    stats = [json.loads(x) for x in (tmp_path / "fast.trec.stats.jsonl").read_text().splitlines()]
    assert [s["from_cache"] for s in stats] == [len(c) for c in _lists()]
    assert all(s["encoded_on_the_fly"] == 0 and "latency_no_encode_s" in s for s in stats)
    capsys.readouterr()
    short = build_embedding_cache(perank_jax.load_encoder(minilm_dir, max_length=32), corpus, tmp_path / "short",
                                  progress=False)
    assert main(base + ["--out", str(tmp_path / "bad.trec"), "--embeddings", str(short)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match the checkpoint's encoder" in err[0] and "max_length 32" in err[0]
    assert not (tmp_path / "bad.trec").exists()


# ------------------------------------------------------------------ data parallel
@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1)], ids=["data8", "data2_fsdp4"])
def test_mesh_splits_rows_over_data_and_ranks_as_one_device(tiny_perank_dir_32, shape, monkeypatch):
    import perank_jax.inference.engine as engine_mod
    import perank_jax.inference.prefix as prefix_mod
    lists = [[f"text {w} {i}" for i, w in enumerate(TOPICS[:m])] for m in (12, 9, 12, 5, 11)]
    queries = [f"query {i} about {w}" for i, w in enumerate(TOPICS[:5])]
    one = hash_ranker(tiny_perank_dir_32, batch_size=8)
    want = one.rerank_batch(queries, lists, window=6, stride=3)
    mesh = make_mesh(shape)
    r = hash_ranker(tiny_perank_dir_32, batch_size=1, mesh=mesh)
    placed = []
    real = engine_mod.shard_rows

    def recording(arrays, m):
        out = real(arrays, m)
        placed.extend(out)
        return out
    monkeypatch.setattr(engine_mod, "shard_rows", recording)
    monkeypatch.setattr(prefix_mod, "shard_rows", recording)      # the shared prefixes and what follows them
    assert r.rerank_batch(queries, lists, window=6, stride=3) == want
    data = shape[0]
    assert placed
    for a in placed:                 # every batch input: B rows split over the data axis, B/data per device
        assert a.shape[0] % data == 0 and len(a.addressable_shards) == 8
        assert {s.data.shape[0] for s in a.addressable_shards} <= {a.shape[0] // data, a.shape[0] // (data * shape[1])}
        assert len({s.index[0].start for s in a.addressable_shards}) >= data
    compiled, traces = r.compile_count, r.traces.count
    assert traces == compiled                                                   # one trace per decode bucket
    again = r.rerank_batch([q + " again" for q in queries], lists, window=6, stride=3)
    assert again == one.rerank_batch([q + " again" for q in queries], lists, window=6, stride=3)
    assert (r.compile_count, r.traces.count) == (compiled, traces)           # nothing recompiles
    assert r.last_stats[0].processed_tokens == one.last_stats[0].processed_tokens


def test_cli_rerank_on_a_mesh_writes_the_one_device_run(tiny_perank_dir_32, tmp_path, capsys):
    req = _requests_file(tmp_path / "req.jsonl", _lists())
    base = ["rerank", "--model", str(tiny_perank_dir_32), "--requests", str(req), "--window", "6", "--stride", "3",
            "--batch-queries", "4"]
    assert main(base + ["--out", str(tmp_path / "one.trec")]) == 0
    assert main(base + ["--out", str(tmp_path / "mesh.trec"), "--mesh", "data=8"]) == 0
    assert (tmp_path / "one.trec").read_text() == (tmp_path / "mesh.trec").read_text()
    capsys.readouterr()
    for extra, expect in ((["--mesh", "data=16"], "needs 16 devices, only 8"),
                          (["--embeddings", str(tmp_path / "nope")], "embedding cache directory not found")):
        assert main(base + ["--out", str(tmp_path / "bad.trec"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err


# ------------------------------------------------------------------ shared prefix
@pytest.mark.parametrize("template", ["paper", "compact"])
@pytest.mark.parametrize("query_token", [False, True], ids=["no_query_token", "query_token"])
def test_shared_prefix_ranks_as_whole_prompts_and_counts_the_prefix_once(tiny_perank_dir_32, template, query_token):
    from perank_jax.listwise.windows import sliding_windows
    base = hash_ranker(tiny_perank_dir_32, batch_size=3)
    base.length_bucket = 256
    shared, whole = (ranker_variant(base, template, query_token, s) for s in (True, False))
    lists = [[f"text {w} {i % 4}" for i, w in enumerate(TOPICS[:m])] for m in (12, 7, 10, 3)]   # duplicates too
    queries = ["short q", "a much longer query " * 4, "q3", "fourth query about fish"]
    assert shared.rerank_batch(queries, lists, window=5, stride=2) == whole.rerank_batch(queries, lists, window=5,
                                                                                        stride=2)
    for q, (ps, s, w) in enumerate(zip(lists, shared.last_stats, whole.last_stats)):
        sizes = [e - s_ for s_, e in sliding_windows(len(ps), 5, 2)]             # two sizes: two prefixes
        cut = {n: int(shared.tokenized_prompt(queries[q], n).placeholder.argmax()) for n in sizes}
        assert s.prefix_tokens == sum(cut.values())                          # each distinct prefix once
        assert s.processed_tokens == w.processed_tokens - sum(cut[n] for n in sizes) + sum(cut.values())
        assert w.prefix_tokens == 0
    for kw in ((dict(top_k=2), dict(mode="single_pass")) if template == "compact" and query_token else ()):
        assert shared.rerank_batch(queries, lists, window=5, stride=2, **kw) == \
            whole.rerank_batch(queries, lists, window=5, stride=2, **kw), kw


def test_shared_prefix_compiles_once_per_bucket_not_per_query(tiny_perank_dir_32):
    r = hash_ranker(tiny_perank_dir_32, batch_size=4)
    lists = [[f"p {i}" for i in range(12)]] * 3
    r.rerank_batch(["first", "second query", "third"], lists, window=6, stride=3)
    compiled, traces, prefix_traces = r.compile_count, r.traces.count, r.prefix_traces.count
    assert prefix_traces == 1 and traces == compiled
    for words in range(1, 6):                          # other queries, other prefix lengths, same buckets
        r.rerank_batch([" ".join(["word"] * words), "x", "y z"], lists, window=6, stride=3)
    assert (r.compile_count, r.traces.count, r.prefix_traces.count) == (compiled, traces, prefix_traces)


@pytest.mark.slow
def test_shared_prefix_ranks_as_whole_prompts_with_the_shipped_model():
    import perank_jax
    from perank_jax.cli import EXAMPLE_SET
    from perank_jax.data.trec import read_requests
    base = perank_jax.PERanker.from_pretrained()
    reqs = read_requests(EXAMPLE_SET)[:3]          # 3 queries x 20 passages, 3 windows each
    queries, texts = [r.query for r in reqs], [[c.text for c in r.candidates] for r in reqs]
    base.embedding_memo = {}
    # the paper's layout and the shipped one on real weights (all four combinations: the tiny test above);
    # decode mode, 5 steps a window: each step reads the KV cache the prefix started
    for template, query_token in (("paper", False), ("compact", True)):
        shared, whole = (ranker_variant(base, template, query_token, s) for s in (True, False))
        shared.embedding_memo = whole.embedding_memo = base.embedding_memo
        a = shared.rerank_batch(queries, texts, window=10, stride=5, top_k=5)
        b = whole.rerank_batch(queries, texts, window=10, stride=5, top_k=5)
        assert a == b, (template, query_token)
        assert all(s.processed_tokens < w.processed_tokens for s, w in zip(shared.last_stats, whole.last_stats))


def test_unrolled_layers_rank_as_rolled_and_compile_once_per_bucket(tiny_perank_dir_32):
    lists = [[f"text {w} {i}" for i, w in enumerate(TOPICS[:m])] for m in (12, 9, 12)]
    queries = ["alpha beta", "gamma", "delta epsilon zeta"]
    rolled, unrolled = hash_ranker(tiny_perank_dir_32, batch_size=4), hash_ranker(tiny_perank_dir_32, batch_size=4, unroll=True)
    assert unrolled.decoder.model.unroll
    assert unrolled.rerank_batch(queries, lists, window=6, stride=3) == \
        rolled.rerank_batch(queries, lists, window=6, stride=3)
    compiled = unrolled.compile_count
    unrolled.rerank_batch(["other words here", "x", "y z"], lists, window=6, stride=3)
    assert unrolled.compile_count == compiled


def test_a_query_scale_override_ranks_as_a_copy_whose_config_has_that_factor(tiny_perank_dir_32, tmp_path):
    at1, at10 = (edited_checkpoint(tiny_perank_dir_32, tmp_path / f"x{f:g}", query_token=True, query_scale=f)
                 for f in (1.0, 10.0))
    overridden, edited, plain = hash_ranker(at1, query_scale=10), hash_ranker(at10), hash_ranker(at1)
    assert (overridden.query_scale, edited.query_scale, plain.query_scale) == (10.0, 10.0, 1.0)
    lists = [[f"text {w} {i}" for i, w in enumerate(TOPICS[:m])] for m in (12, 9)]
    queries = ["alpha beta", "gamma"]
    got = overridden.rerank_batch(queries, lists, window=6, stride=3, mode="single_pass")
    assert got == edited.rerank_batch(queries, lists, window=6, stride=3, mode="single_pass")
    assert got != plain.rerank_batch(queries, lists, window=6, stride=3, mode="single_pass")   # the factor matters
    with pytest.raises(ValueError, match="must be > 0"):
        hash_ranker(at1, query_scale=0)
