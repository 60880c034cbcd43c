"""Builders turn plain inputs into records the training pipeline accepts: relevant documents
first, first-stage order otherwise, placeholders matching the candidates."""
import json
import sys
from pathlib import Path

import pytest

from perank_jax.data.trec import DataError, Hit
from perank_jax.data.training_records import qrels_lists, reconstruction_record, relevance_first

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


def test_relevance_first_orders_by_grade_then_first_stage_order():
    assert relevance_first(["a", "b", "c", "d"], {"c": 1, "d": 2, "a": 0}) == [3, 2, 0, 1]


def test_qrels_lists_put_unretrieved_relevant_docs_in_and_skip_unjudged_queries():
    run = {"q1": [Hit(d, 10 - i, i + 1) for i, d in enumerate("abcde")], "q2": [Hit("a", 1.0, 1)]}
    corpus = {d: f"text of [{d}] doc" for d in "abcde"}
    corpus["z"] = "cites [7] doc"
    recs = list(qrels_lists(run, {"q1": "query one", "q2": "query two"}, corpus,
                            {"q1": {"z": 1, "c": 2}}, n=4))
    assert len(recs) == 1                                   # q2 has no relevant document
    r = recs[0]
    assert r["extra_texts"] == ["text of [a] doc", "text of [b] doc", "text of [c] doc", "cites [7] doc"]
    assert r["ranking"] == [2, 3, 0, 1]
    assert r["messages_wo_content"][0]["content"].count("<PLACEHOLDER>") == 4
    assert "cites (7) doc" in r["messages_w_content"][0]["content"]   # [digits]-style brackets rewritten
    with pytest.raises(DataError, match="not in the corpus"):
        list(qrels_lists(run, {"q1": "x", "q2": "y"}, {"a": "t"}, {"q1": {"a": 1}}, n=4))


def test_build_tools_write_records_the_pipeline_reads(tmp_path):
    import build_stage1_data
    import build_stage2_data
    from perank_jax.train.data import prepare
    from fixtures import make_tokenizer
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"_id": d, "title": "T", "text": f"w1 w{i}"}) + "\n"
                                              for i, d in enumerate("abc")))
    (tmp_path / "q.tsv").write_text("1\tw2 w3\n")
    (tmp_path / "qrels.txt").write_text("1 0 b 1\n")
    (tmp_path / "run.txt").write_text("1 Q0 a 1 3.0 x\n1 Q0 b 2 2.0 x\n1 Q0 c 3 1.0 x\n")
    assert build_stage1_data.main(["--passages", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "s1.jsonl")]) == 0
    assert build_stage2_data.main(["--run", str(tmp_path / "run.txt"), "--queries", str(tmp_path / "q.tsv"),
                                   "--qrels", str(tmp_path / "qrels.txt"), "--corpus", str(tmp_path / "c.jsonl"),
                                   "--out", str(tmp_path / "s2.jsonl"), "-n", "3"]) == 0
    tok = make_tokenizer()
    s1 = [json.loads(x) for x in (tmp_path / "s1.jsonl").read_text().splitlines()]
    s2 = [json.loads(x) for x in (tmp_path / "s2.jsonl").read_text().splitlines()]
    assert s2[0]["ranking"] == [1, 0, 2]
    embed = lambda texts: [[1.0, 0.0]] * len(texts)
    assert len(prepare(s1, tok, 1, embed, max_len=128, max_passages=1)) == 3
    assert len(prepare(s2, tok, 2, embed, max_len=512, max_passages=3)) == 1
    assert reconstruction_record("a <RANK> b")["extra_texts"] == ["a b"]
