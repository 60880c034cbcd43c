"""The training data pipeline: bad records stop with their index and reason before anything
trains; good records become fixed-shape batches in a seeded, resumable, per-process order."""
import numpy as np
import pytest

from perank_jax.listwise import prompts
from perank_jax.train import data as D
from perank_jax.train.embeddings import table_embedder
from fixtures import make_tokenizer, stage1_records, stage2_records, table_file, write_jsonl


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _prepare(tok, records, stage, table, **kw):
    def embed(texts):
        return np.stack([table[t] for t in texts])
    args = dict(max_len=kw.pop("max_len", 512), max_passages=kw.pop("max_passages", 5))
    return D.prepare(records, tok, stage, embed, source="train.jsonl", **args, **kw)


def test_stage2_records_tokenise_with_placeholders_rank_slots_and_ranking(tok, tmp_path):
    records, table = stage2_records(6, short=False)
    ds = D.read_jsonl(write_jsonl(tmp_path / "s2.jsonl", records))
    prep = _prepare(tok, list(ds), 2, table)
    ph_id, rank_id = D.perank_token_ids(tok)
    b = D.collate(prep, np.array([0, 3]), buckets=[64, 128, 256], max_passages=6)
    assert b["wo_ids"].shape[1] in (64, 128) and b["w_ids"].shape[1] >= b["wo_ids"].shape[1]
    assert b["emb"].shape == (2, 6, 16) and b["valid"][:, :5].all() and not b["valid"][:, 5].any()
    for v in ("wo", "w"):
        t = prep.views[v][0]
        assert (t.ids[t.ph_pos] == ph_id).all() and (t.ids[t.rank_pos] == rank_id).all()
        assert len(t.rank_pos) == 5 and t.rank_pos[0] > t.ph_pos[-1]
        assert (b[f"{v}_ph_pos"][:, 5] == b[f"{v}_ids"].shape[1]).all()          # padded passage: dropped
    np.testing.assert_array_equal(b["ranking"][0, :5], records[0]["ranking"])
    np.testing.assert_allclose(b["emb"][1, 2], table[records[3]["extra_texts"][2]])


def test_stage1_label_mask_covers_exactly_the_assistant_turn(tok):
    records, table = stage1_records(3)
    prep = _prepare(tok, records, 1, table, max_passages=1)
    t = prep.views["main"][0]
    labelled = tok.convert_ids_to_tokens(t.ids[t.label_mask].tolist())
    assert labelled == records[0]["extra_texts"][0].split() + ["</s>"]
    b = D.collate(prep, np.array([0, 1]), buckets=[32], max_passages=1)
    # targets are shifted: weight at t marks that token t+1 is an assistant token
    row = b["targets"][0][b["weights"][0] > 0]
    assert tok.convert_ids_to_tokens(row.tolist()) == labelled


def _bad(records, i, field, value):
    records = [dict(r) for r in records]
    records[i] = dict(records[i], **{field: value})
    return records


@pytest.mark.parametrize("case,needle", [
    ("not_permutation", "not a permutation"),
    ("placeholder_count", "extra_texts count 5 != 4 <PLACEHOLDER>"),
    ("over_long", "over-long record"),
    ("non_finite", "non-finite passage embedding"),
])
def test_bad_record_stops_with_index_and_reason(tok, tmp_path, case, needle):
    records, table = stage2_records(5)
    table = dict(table)
    if case == "not_permutation":
        records = _bad(records, 3, "ranking", [0, 1, 1, 2, 4])
    elif case == "placeholder_count":
        short = prompts.embedding_prompt("topic t1", 4)
        records = _bad(records, 3, "messages_wo_content", [{"role": "user", "content": short}])
    elif case == "over_long":
        long = prompts.embedding_prompt("topic t1 " + "w1 " * 300, 5)
        records = _bad(records, 3, "messages_wo_content", [{"role": "user", "content": long}])
    elif case == "non_finite":
        table[records[3]["extra_texts"][1]] = np.full(16, np.nan, np.float32)
    path = table_file(tmp_path / "emb.npz", table)
    with pytest.raises(D.DataError) as e:
        D.prepare(list(D.read_jsonl(write_jsonl(tmp_path / "bad.jsonl", records))), tok, 2,
                  table_embedder(path), max_len=200, max_passages=5, source="bad.jsonl")
    msg = str(e.value)
    assert "record 3 (line 4)" in msg and needle in msg, msg
    assert "record 2" not in msg


def test_order_is_seeded_resumable_and_split_over_processes():
    o = D.Order(n_records=10, global_batch=4, seed=3)
    assert o.steps_per_epoch == 2
    first = [o.indices(s).tolist() for s in range(5)]
    assert first == [D.Order(10, 4, 3).indices(s).tolist() for s in range(5)]   # pure function of step
    assert first != [D.Order(10, 4, 4).indices(s).tolist() for s in range(5)]
    assert len(set(first[0]) | set(first[1])) == 8                              # no repeats within an epoch
    assert first[2] != first[0]                                                 # new permutation per epoch
    rows = [D.process_rows(4, p, 2) for p in range(2)]
    assert sum((first[0][r] for r in rows), []) == first[0]
    with pytest.raises(D.DataError):
        D.process_rows(4, 0, 3)


def test_passage_embeddings_come_from_the_encoder_cache_with_encoder_fallback(minilm_dir, tmp_path):
    import json as _json
    from perank_jax.data.embcache_build import build_embedding_cache
    from perank_jax.train.embeddings import EmbeddingTableError, cache_embedder, encoder_embedder
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(_json.dumps({"_id": str(i), "text": t}) + "\n"
                              for i, t in enumerate(["a cat sat", "dogs  bark loudly", "rain in spain"])))
    enc = encoder_embedder(minilm_dir, max_length=128)
    build_embedding_cache(enc.encoder, corpus, tmp_path / "cache", title_format=False, progress=False)
    with pytest.raises(EmbeddingTableError, match="not in the cached corpus"):
        cache_embedder(tmp_path / "cache")(["dogs bark loudly", "unseen text"])
    got = cache_embedder(tmp_path / "cache", fallback=enc)(["dogs bark loudly", "unseen text"])
    want = enc(["dogs  bark loudly", "unseen text"])
    np.testing.assert_allclose(got, want, atol=1e-5)
