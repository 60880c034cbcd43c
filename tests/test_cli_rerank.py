"""`perank rerank` end to end on a tiny random checkpoint, and one clear error (naming the
file and line) for bad inputs, with any existing output left untouched."""
import json

import pytest

from perank_jax.cli import main
from perank_jax.data.trec import read_run
from perank_jax.inference.ranker import PERanker


DOCS = {f"d{i}": f"document {i} about {w}" for i, w in enumerate("cats dogs rivers banks loans trees "
                                                                 "music pianos courts cities fish birds".split())}


def _write_inputs(tmp_path, run_lines=None, corpus=None, queries=None):
    corpus = DOCS if corpus is None else corpus
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                                                   for d, t in corpus.items()))
    (tmp_path / "queries.tsv").write_text(queries if queries is not None else "q1\tcats and dogs\nq2\tmoney in banks\n")
    if run_lines is None:
        run_lines = [f"q1 Q0 d{i} {i + 1} {20 - i} bm25\n" for i in range(12)]
        run_lines += [f"q2 Q0 d{i} {k + 1} {10 - k} bm25\n" for k, i in enumerate([3, 4, 5, 0, 1, 2, 7])]
    (tmp_path / "run.trec").write_text("".join(run_lines))
    return ["--run", str(tmp_path / "run.trec"), "--corpus", str(tmp_path / "corpus.jsonl"),
            "--queries", str(tmp_path / "queries.tsv")]


def test_rerank_cli_writes_run_and_stats_matching_the_library(tmp_path, tiny_perank_dir_32):
    args = _write_inputs(tmp_path)
    out = tmp_path / "out.trec"
    assert main(["rerank", "--model", str(tiny_perank_dir_32), *args,    # encoder: config.json encoder_name
                 "--out", str(out), "--window", "5", "--stride", "2"]) == 0
    got = read_run(out)
    first = read_run(tmp_path / "run.trec")
    ranker = PERanker.from_pretrained(tiny_perank_dir_32)
    queries = {"q1": "cats and dogs", "q2": "money in banks"}
    for qid, hits in got.items():
        cands = [h.docid for h in first[qid]]
        assert sorted(h.docid for h in hits) == sorted(cands)
        scores = [h.score for h in hits]
        assert all(a > b for a, b in zip(scores, scores[1:]))           # strictly decreasing
        want = ranker.rerank(queries[qid], [DOCS[d] for d in cands], window=5, stride=2)
        assert [h.docid for h in hits] == [cands[i] for i in want]
    stats = [json.loads(line) for line in (tmp_path / "out.trec.stats.jsonl").read_text().splitlines()]
    assert [s["qid"] for s in stats] == ["q1", "q2"]
    from perank_jax.listwise.windows import sliding_windows
    wins = sliding_windows(12, 5, 2)                                   # 12 does not divide by 2-strides of 5
    assert stats[0]["windows"] == len(wins) and stats[0]["generated_tokens"] == sum(e - s for s, e in wins)
    assert all(s["latency_s"] > 0 and s["processed_tokens"] > s["n_passages"] for s in stats)


def test_rerank_cli_reads_and_writes_rank_llm_requests(tmp_path, tiny_perank_dir_32):
    req = tmp_path / "req.jsonl"
    req.write_text(json.dumps({"query": {"text": "cats", "qid": "7"},
                               "candidates": [{"docid": d, "score": 1.0 - i / 10, "doc": {"text": t}}
                                              for i, (d, t) in enumerate(list(DOCS.items())[:6])]}) + "\n")
    out = tmp_path / "out.jsonl"
    enc = json.loads((tiny_perank_dir_32 / "config.json").read_text())["encoder_name"]
    assert main(["rerank", "--model", str(tiny_perank_dir_32), "--encoder", enc, "--requests", str(req),
                 "--out", str(out), "--window", "0", "--top-k", "3"]) == 0
    rec = json.loads(out.read_text())
    assert rec["query"]["qid"] == "7" and sorted(c["docid"] for c in rec["candidates"]) == sorted(list(DOCS)[:6])
    scores = [c["score"] for c in rec["candidates"]]
    assert all(a > b for a, b in zip(scores, scores[1:]))


@pytest.mark.parametrize("case,expect", [
    ("missing_doc", "run.trec:3"),
    ("duplicate_docid", "run.trec:2"),
    ("malformed_run_line", "run.trec:2"),
    ("query_without_text", "run.trec:1"),
    ("no_candidates", "req.jsonl:1"),
    ("empty_document", "'d1' has empty text"),
])
def test_bad_inputs_give_one_clear_error_and_no_output(tmp_path, tiny_perank_dir_32, capsys, case, expect):
    run = ["q1 Q0 d0 1 3 x\n", "q1 Q0 d1 2 2 x\n", "q1 Q0 d2 3 1 x\n"]
    corpus, queries = dict(DOCS), "q1\tcats\n"
    extra = []
    if case == "missing_doc":
        del corpus["d2"]
    elif case == "duplicate_docid":
        run[1] = "q1 Q0 d0 2 2 x\n"
    elif case == "malformed_run_line":
        run[1] = "q1 Q0 d1 two 2 x\n"
    elif case == "query_without_text":
        queries = "q9\tother\n"
    elif case == "empty_document":
        corpus["d1"] = "   "
    args = _write_inputs(tmp_path, run, corpus, queries)
    if case == "no_candidates":
        (tmp_path / "req.jsonl").write_text(json.dumps({"query": {"text": "x", "qid": "1"}, "candidates": []}) + "\n")
        args = ["--requests", str(tmp_path / "req.jsonl")]
    out = tmp_path / "out.trec"
    out.write_text("previous content\n")
    code = main(["rerank", "--model", str(tiny_perank_dir_32), *args,
                 "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and expect in err and err.count("\n") == 1, err
    assert out.read_text() == "previous content\n"
    assert not (tmp_path / "out.trec.stats.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rerank_refuses_bad_depth_and_output_paths_before_any_work(tmp_path, capsys, tiny_perank_dir_32):
    req = tmp_path / "req.jsonl"
    req.write_text(json.dumps({"query": {"text": "q", "qid": "1"},
                               "candidates": [{"docid": "d1", "doc": {"contents": "alpha"}, "score": 1.0}]}) + "\n")
    base = ["rerank", "--model", str(tiny_perank_dir_32), "--requests", str(req)]
    (tmp_path / "adir").mkdir()
    for extra, expect in ((["--depth", "-1", "--out", str(tmp_path / "o.trec")], "--depth must be >= 1, got -1"),
                          (["--depth", "0", "--out", str(tmp_path / "o.trec")], "--depth must be >= 1, got 0"),
                          (["--out", str(tmp_path / "adir")], "is a directory"),
                          (["--out", str(tmp_path / "o.trec"), "--stats", str(tmp_path / "o.trec")], "two outputs")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert expect in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.trec").exists()


def test_rerank_creates_missing_output_directories(tmp_path, tiny_perank_dir_32):
    args = _write_inputs(tmp_path)
    out = tmp_path / "new" / "sub" / "run.trec"
    assert main(["rerank", "--model", str(tiny_perank_dir_32), *args, "--out", str(out), "--window", "0"]) == 0
    assert sorted(read_run(out)) == ["q1", "q2"] and (out.parent / "run.trec.stats.jsonl").is_file()
