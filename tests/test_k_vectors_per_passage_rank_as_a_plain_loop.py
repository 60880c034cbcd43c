"""k > 1 vectors per passage rank exactly as a plain Python loop over the same logits.

A test-local projector maps each passage to k = 2 LLM input vectors. PERanker (compiled scan
decoder, KV cache, buckets) is compared with a reference written here from the method alone:
the prompt text with every placeholder repeated k times, the slots written at the placeholders,
a full forward pass without cache per step, a passage's score = the mean of its k logits h . e_ij,
argmax over the passages not yet chosen, the chosen passage's mean vector appended as the next
input. Full decoding, top-k early stop, single pass and sliding windows; with and without the
query's slot; the shared-prefix and batched paths equal the plain path; one compile per bucket.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perank_jax.inference.ranker import PERanker
from perank_jax.listwise.windows import sliding_windows

from external_projector import TwoTokenProjector
from fixtures import HashEncoder

K = TwoTokenProjector.tokens_per_passage
PASSAGES = [f"passage {i} about {w}" for i, w in enumerate("cats dogs fish birds trees rivers pianos".split())]
QUERIES = ["dogs and cats", "rivers with fish", "music on a piano"]


@pytest.fixture(scope="module")
def base(tiny_perank_dir_32):
    """(the tiny checkpoint's ranker, the reference's forward pass: no cache, one compiled shape)."""
    ranker = PERanker.from_pretrained(tiny_perank_dir_32, encoder=HashEncoder(32))
    model = ranker.decoder.model
    return ranker, jax.jit(lambda x, pos, mask: model.forward(x, pos, mask)[0])


def k2_ranker(base, query_token: bool, share_prefix: bool = False) -> PERanker:
    """The tiny checkpoint's decoder with the k = 2 projector (query slot scaled by 5 when on)."""
    ranker = base[0]
    return PERanker(ranker.decoder, TwoTokenProjector(32, ranker.decoder.config.hidden_size), ranker.tokenizer,
                    HashEncoder(32), config={"query_token": query_token, "query_scale": 5.0 if query_token else 1.0},
                    length_bucket=128, passage_bucket=8, share_prefix=share_prefix)


@pytest.fixture(scope="module")
def rankers(base):
    """(plain ranker: whole prompts, shared-prefix ranker, reference forward), k = 2 with the query slot."""
    return k2_ranker(base, True), k2_ranker(base, True, share_prefix=True), base[1]


def reference_window(ranker, fwd, query, texts, steps, single_pass=False):
    """The plain loop for one window: a permutation of range(len(texts)) (first `steps` decoded,
    the rest in input order), or the single-pass order."""
    model, proj = ranker.decoder.model, ranker.projector
    enc = HashEncoder(32).encode(texts + [query])
    slots = np.array(proj(jnp.asarray(enc)))                                     # [n + 1, k, H]
    if ranker.query_token:
        slots[-1] *= ranker.query_scale
    else:
        slots = slots[:-1]
    tok = ranker.tokenizer
    ids = []
    for t in tok(ranker.prompt(query, texts), add_special_tokens=False)["input_ids"]:
        ids += [t] * (K if t == ranker.placeholder_id else 1)
    ids = np.asarray(ids)
    table = np.asarray(model.embedding[...])
    x = table[ids]
    x[ids == ranker.placeholder_id] = slots.reshape(-1, slots.shape[-1])
    n = len(texts)
    S = 256
    chosen = []
    for _ in range(n if single_pass else steps):
        seq = np.concatenate([x] + [slots[c].mean(0)[None] for c in chosen])
        L = len(seq)
        xs = np.zeros((1, S, seq.shape[1]), np.float32)
        xs[0, :L] = seq
        h = np.asarray(fwd(jnp.asarray(xs), jnp.arange(S)[None], jnp.arange(S)[None] < L))[0, L - 1]
        scores = (slots[:n].astype(np.float64) @ h.astype(np.float64)).mean(axis=1)   # mean of the k logits
        if single_pass:
            return [int(i) for i in np.argsort(-scores, kind="stable")]
        scores[chosen] = -np.inf
        chosen.append(int(np.argmax(scores)))
    return chosen + [i for i in range(n) if i not in chosen]


def reference(ranker, fwd, query, texts, window=None, stride=10, top_k=None, mode="decode"):
    order = list(range(len(texts)))
    for s, e in (sliding_windows(len(texts), window, stride) if window else [(0, len(texts))]):
        ids = order[s:e]
        perm = reference_window(ranker, fwd, query, [texts[i] for i in ids], min(top_k or (e - s), e - s),
                                mode == "single_pass")
        order[s:e] = [ids[i] for i in perm]
    return order


@pytest.mark.parametrize("kw", [{}, {"top_k": 2}, {"mode": "single_pass"}, {"window": 4, "stride": 2}],
                         ids=["decode", "top_k", "single_pass", "sliding"])
def test_k2_rankings_equal_the_plain_loop(rankers, kw):
    plain, _, fwd = rankers
    got = plain.rerank(QUERIES[0], PASSAGES, **kw)
    assert got == reference(plain, fwd, QUERIES[0], PASSAGES, **kw)


def test_k2_rankings_without_a_query_slot_equal_the_plain_loop(base):
    plain = k2_ranker(base, False)
    assert plain.rerank(QUERIES[1], PASSAGES) == reference(plain, base[1], QUERIES[1], PASSAGES)


def test_k2_prompts_hold_k_placeholders_per_slot_and_count_them(rankers):
    plain = rankers[0]
    slots = 3 + plain.query_token
    p = plain.tokenized_prompt(QUERIES[0], 3)
    assert int(p.placeholder.sum()) == K * slots
    assert plain.prompt(QUERIES[0], PASSAGES[:3]).count("<PLACEHOLDER>") == slots
    plain.rerank(QUERIES[0], PASSAGES[:3])
    assert plain.last_stats[0].processed_tokens == len(p)        # the k tokens of each slot are processed
    assert plain.last_stats[0].generated_tokens == 3             # one output token per passage


def test_k2_shared_prefix_and_batched_queries_equal_the_plain_path_compiled_once_per_bucket(rankers):
    plain, shared, _ = rankers
    lists = [PASSAGES, PASSAGES[::-1], PASSAGES[3:] + PASSAGES[:3]]
    for kw in ({"window": 4, "stride": 2}, {"window": 4, "stride": 2, "mode": "single_pass"}):
        one_by_one = [plain.rerank(q, ps, **kw) for q, ps in zip(QUERIES, lists)]
        assert plain.rerank_batch(QUERIES, lists, **kw) == one_by_one
        assert shared.rerank_batch(QUERIES, lists, **kw) == one_by_one
        saved = [p.processed_tokens - s.processed_tokens for s, p in zip(shared.last_stats, plain.last_stats)]
        assert min(saved) >= 0 and sum(saved) > 0               # each distinct prefix prefilled once
    # every window of size <= 4 shares one decode bucket per (batch rows, mode, steps): another
    # sliding rerank of other lists compiles nothing new
    compiled, traces = shared.compile_count, shared.traces.count
    shared.rerank_batch(QUERIES[::-1], [PASSAGES[1:] + PASSAGES[:1], PASSAGES[2:] + PASSAGES[:2], PASSAGES],
                        window=4, stride=2)
    assert (shared.compile_count, shared.traces.count) == (compiled, traces)


class WrongShapeProjector(TwoTokenProjector):
    """Declares k = 2 but returns one vector per passage of the wrong width."""

    def __call__(self, passages, query=None):
        return passages @ self.w[...]


class IntProjector(TwoTokenProjector):
    def __call__(self, passages, query=None):
        return super().__call__(passages).astype(jnp.int32)


@pytest.mark.parametrize("cls,message", [
    (WrongShapeProjector, r"projector test_k_vectors_per_passage_rank_as_a_plain_loop.WrongShapeProjector returned "
                          r"shape \(2, 16\) dtype float32 for 2 passages; expected shape \(2, 2, 8\) dtype float32"),
    (IntProjector, r"projector test_k_vectors_per_passage_rank_as_a_plain_loop.IntProjector returned shape "
                   r"\(2, 2, 8\) dtype int32 for 2 passages; expected shape \(2, 2, 8\) dtype float32")])
def test_a_projector_returning_the_wrong_shape_or_dtype_is_refused_where_it_enters_naming_it(base, cls, message):
    """One check (check_output, once, abstractly): build_projector runs it for a configured projector,
    and PERanker for an instance built by hand, before anything is compiled."""
    from perank_jax.models.projector import ProjectorError
    ranker = base[0]
    with pytest.raises(ProjectorError, match=message):
        PERanker(ranker.decoder, cls(4, 8), ranker.tokenizer, HashEncoder(4))


def test_k2_ranks_the_same_from_the_embedding_cache(tiny_perank_dir_32, tmp_path):
    import json
    from perank_jax.data.embcache_build import build_embedding_cache
    loaded = PERanker.from_pretrained(tiny_perank_dir_32)                  # its own tiny BERT encoder
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(PASSAGES)))
    cache = build_embedding_cache(loaded.encoder, corpus, tmp_path / "cache", batch_size=8, progress=False)
    ranker = PERanker(loaded.decoder, TwoTokenProjector(32, loaded.decoder.config.hidden_size), loaded.tokenizer,
                      loaded.encoder, config=loaded.config, length_bucket=128, passage_bucket=8)
    docids = [f"d{i}" for i in range(len(PASSAGES))]
    encoded = ranker.rerank(QUERIES[0], PASSAGES, docids=docids, window=4, stride=2)
    ranker.use_embeddings(cache)
    assert ranker.rerank(QUERIES[0], PASSAGES, docids=docids, window=4, stride=2) == encoded
    assert ranker.last_stats[0].from_cache == len(PASSAGES) and ranker.last_stats[0].encoded_on_the_fly == 0
    assert ranker.compile_count == 1
