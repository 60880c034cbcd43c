"""TREC/corpus/request readers and writers: round trips, ordering, and one clear error per bad input."""
import json
import sys
import types
from pathlib import Path

import pytest

from perank_jax.core.atomic import atomic_write

from perank_jax.data.ir_datasets import load_ir_dataset
from perank_jax.data.trec import (Candidate, DataError, Hit, Request, build_rerank_requests, read_corpus,
                                  read_qrels, read_queries, read_requests, read_run)
from perank_jax.data.trec_write import write_qrels, write_requests, write_run

DATA = Path("/work/shared/data")


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_run_round_trip_keeps_order_and_given_scores(tmp_path):
    run = {"q1": [Hit("d3", 2.5, 1), Hit("d1", 1.25, 2), Hit("d2", -0.5, 3)], "q2": [Hit("x", 0.1, 1)]}
    p = write_run(run, tmp_path / "r.trec", tag="t", scores="given")
    back = read_run(p)
    assert list(back) == ["q1", "q2"]
    assert back["q1"] == run["q1"] and back["q2"] == run["q2"]


def test_rank_scores_strictly_decrease_with_rank(tmp_path):
    docs = [f"d{i}" for i in range(150)]  # beyond rank 30 where round(1/rank, 3) would tie
    p = write_run({"q": docs}, tmp_path / "r.trec")
    rows = [line.split() for line in p.read_text().splitlines()]
    assert [r[2] for r in rows] == docs
    assert [int(r[3]) for r in rows] == list(range(1, 151))
    scores = [float(r[4]) for r in rows]
    assert all(a > b for a, b in zip(scores, scores[1:]))
    assert [h.docid for h in read_run(p)["q"]] == docs


def test_read_run_orders_by_score_then_rank(tmp_path):
    p = _write(tmp_path, "r.txt", "q Q0 c 3 0.5 t\nq Q0 a 1 0.9 t\nq Q0 b 2 0.5 t\nq Q0 z 4 0.7 t\n")
    assert [h.docid for h in read_run(p)["q"]] == ["a", "z", "b", "c"]


def test_qrels_round_trip(tmp_path):
    qrels = {"1": {"a": 2, "b": 0}, "7": {"c": 1}}
    assert read_qrels(write_qrels(qrels, tmp_path / "q.txt")) == qrels


def test_queries_tsv_and_jsonl(tmp_path):
    tsv = _write(tmp_path, "q.tsv", "1\thello world\n\n2\tsecond\tquery\n")
    assert read_queries(tsv) == {"1": "hello world", "2": "second\tquery"}
    jl = _write(tmp_path, "q.jsonl", '{"qid": 1, "query": "a"}\n{"_id": "2", "text": "b"}\n')
    assert read_queries(jl) == {"1": "a", "2": "b"}


def test_corpus_jsonl_tsv_and_paper_title_format(tmp_path):
    jl = _write(tmp_path, "c.jsonl", '{"_id": "a", "title": "T  1", "text": "x\\ny"}\n'
                                     '{"docid": "b", "contents": "only text"}\n{"id": "c", "title": "", "text": "z"}\n')
    assert read_corpus(jl) == {"a": "T  1 x\ny", "b": "only text", "c": "z"}
    assert read_corpus(jl, title_format=True) == {"a": "Title: T 1 Content: x y", "b": "only text",
                                                  "c": "Title: Content: z"}
    tsv = _write(tmp_path, "c.tsv", "d1\tsome text\nd2\tmore\n")
    assert read_corpus(tsv) == {"d1": "some text", "d2": "more"}


def test_requests_round_trip_and_flat_format(tmp_path):
    reqs = [Request("q1", "what", [Candidate("a", 3.0, "A text"), Candidate("b", 1.0, "B")])]
    back = read_requests(write_requests(reqs, tmp_path / "r.jsonl"))
    assert back == reqs
    flat = {"qid": "9", "query": "qq", "candidates": [{"docid": "y", "rank": 2, "score": 1.0, "text": "Y"},
                                                        {"docid": "x", "rank": 1, "score": 2.0, "text": "X"}]}
    got = read_requests(_write(tmp_path, "f.jsonl", json.dumps(flat) + "\n"))
    assert got == [Request("9", "qq", [Candidate("x", 2.0, "X"), Candidate("y", 1.0, "Y")])]


def test_build_rerank_requests_joins_in_run_order(tmp_path):
    run = read_run(_write(tmp_path, "r.txt", "q2 Q0 b 1 2 t\nq2 Q0 a 2 1 t\nq1 Q0 a 1 5 t\n"))
    queries = read_queries(_write(tmp_path, "q.tsv", "q1\tone\nq2\ttwo\n"))
    corpus = read_corpus(_write(tmp_path, "c.tsv", "a\tA\nb\tB\n"))
    reqs = build_rerank_requests(run, queries, corpus, k=1)
    assert reqs == [Request("q2", "two", [Candidate("b", 2.0, "B")]), Request("q1", "one", [Candidate("a", 5.0, "A")])]


BAD_INPUTS = [
    (read_run, "q Q0 a 1 1.0 t\nq Q0 b 2 1.0\n", 2, "6 fields"),
    (read_run, "q Q0 a one 1.0 t\n", 1, "not an int"),
    (read_run, "q Q0 a 1 nan t\n", 1, "not finite"),
    (read_run, "q Q0 a 1 2 t\nq Q0 b 2 1 t\nq Q0 a 3 0 t\n", 3, "duplicate docid 'a'"),
    (read_qrels, "q 0 a 1\nq 0 b\n", 2, "4 fields"),
    (read_qrels, "q 0 a 1\nq 0 b x\n", 2, "not an integer"),
    (read_qrels, "q 0 a 1\nq 0 a 2\n", 2, "duplicate judgement"),
    (read_queries, "1\tok\n2 no tab\n", 2, "qid<TAB>query"),
    (read_queries, "1\tok\n1\tagain\n", 2, "duplicate query id"),
    (read_queries, "1\tok\n2\t  \n", 2, "empty query"),
    (read_queries, '{"qid": "1", "query": "a"}\n{"qid": "2"}\n', 2, "missing query text"),
    (read_queries, '{"qid": "1", "query": "a"}\n{"qid": \n', 2, "not valid JSON"),
    (read_corpus, "a\tA\nb B\n", 2, "docid<TAB>text"),
    (read_corpus, "a\tA\na\tB\n", 2, "duplicate document id"),
    (read_corpus, '{"_id": "a", "text": "x"}\n{"_id": "b", "title": "t"}\n', 2, "missing document text"),
    (read_corpus, '{"_id": "a", "text": "x"}\n[1, 2]\n', 2, "expected a JSON object"),
    (read_requests, '{"qid": "1", "query": "q", "candidates": []}\n', 1, "no candidates"),
    (read_requests, '{"qid": "1", "query": "q", "candidates": [{"docid": "a", "text": "x"}, '
                    '{"docid": "a", "text": "y"}]}\n', 1, "duplicate docid"),
    (read_requests, '{"query": {"text": "q", "qid": "1"}, "candidates": [{"doc": {"text": "x"}}]}\n', 1,
     "candidates[0].docid"),
]


@pytest.mark.parametrize("reader,text,line,fragment", BAD_INPUTS)
def test_bad_input_error_names_file_and_line(tmp_path, reader, text, line, fragment):
    p = _write(tmp_path, "bad.txt", text)
    with pytest.raises(DataError) as e:
        reader(p)
    assert str(e.value).startswith(f"{p}:{line}:"), str(e.value)
    assert fragment in str(e.value)


@pytest.mark.parametrize("reader", [read_run, read_qrels, read_queries, read_corpus, read_requests])
def test_empty_file_is_an_error_naming_the_file(tmp_path, reader):
    p = _write(tmp_path, "empty.txt", "\n  \n")
    with pytest.raises(DataError, match=str(p)):
        reader(p)


def test_join_errors_name_the_offending_file_and_line(tmp_path):
    run_p = _write(tmp_path, "r.txt", "q1 Q0 a 1 2 t\nq1 Q0 zz 2 1 t\n")
    q_p = _write(tmp_path, "q.tsv", "q1\tone\n")
    c_p = _write(tmp_path, "c.tsv", "a\tA\n")
    run, queries, corpus = read_run(run_p), read_queries(q_p), read_corpus(c_p)
    with pytest.raises(DataError, match=rf"^{run_p}:2: docid 'zz' .* not in the corpus {c_p}"):
        build_rerank_requests(run, queries, corpus)
    with pytest.raises(DataError, match=rf"^{run_p}:1: query 'q1' has no text in {tmp_path / 'q2.tsv'}"):
        build_rerank_requests(run, read_queries(_write(tmp_path, "q2.tsv", "other\tx\n")), corpus)
    more_q = read_queries(_write(tmp_path, "q3.tsv", "q1\tone\nq9\tnine\n"))
    with pytest.raises(DataError, match=r"q3.tsv:2: query 'q9' has no candidates"):
        build_rerank_requests(run, more_q, corpus)


def test_write_run_refuses_bad_rankings_and_leaves_no_file(tmp_path):
    p = tmp_path / "out.trec"
    for run, kw, msg in [({}, {}, "empty run"), ({"q": []}, {}, "empty ranking"),
                         ({"q": ["a", "a"]}, {}, "twice"),
                         ({"q": [("a", 1.0), ("b", 1.0)]}, {"scores": "given"}, "strictly")]:
        with pytest.raises(DataError, match=msg):
            write_run(run, p, **kw)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    p = write_run({"q": ["a"]}, tmp_path / "out.trec")
    before = p.read_text()

    def boom(f):
        f.write("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text() == before and list(tmp_path.iterdir()) == [p]


def test_ir_datasets_missing_gives_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "ir_datasets", None)  # import fails like an uninstalled package
    with pytest.raises(DataError, match=r"pip install ir_datasets.*--queries.*--qrels.*--run.*--corpus"):
        load_ir_dataset("msmarco-passage/trec-dl-2020")


def test_ir_datasets_offline_gives_clear_message(monkeypatch):
    class Offline:
        def queries_iter(self):
            raise ConnectionError("Failed to resolve 'msmarco.blob.core.windows.net'")
    fake = types.SimpleNamespace(load=lambda name: Offline())
    monkeypatch.setitem(sys.modules, "ir_datasets", fake)
    with pytest.raises(DataError, match=r"could not load 'beir/scifact/test' \(ConnectionError.*offline.*--qrels"):
        load_ir_dataset("beir/scifact/test")


@pytest.mark.skipif(not (DATA / "dl20").is_dir(), reason="shared data not present")
def test_dl20_candidates_file_equals_run_joined_with_docs():
    d = DATA / "dl20"
    joined = build_rerank_requests(read_run(d / "run.bm25.top100.txt"), read_queries(d / "queries.tsv"),
                                   read_corpus(d / "docs.tsv"))
    shipped = {r.qid: r for r in read_requests(d / "bm25.top100.candidates.jsonl")}
    assert len(joined) == len(shipped) == 54
    for r in joined:
        s = shipped[r.qid]
        assert s.query == r.query
        assert [(c.docid, c.text) for c in s.candidates] == [(c.docid, c.text) for c in r.candidates]
