"""Every command's edges, driven as a user drives them (`perank ...` through cli.main, or a real
subprocess where signals are involved): nothing lost, nothing silently wrong, no traceback.

One section per class of defect; a new command adds its cases to each section:
  1. outputs: wrong-kind paths refused before any work, user files never touched
  2. interrupts: Ctrl-C exits 130, SIGTERM 143, with outputs untouched (training: tests/test_training_stage2_...)
  3. impossible numbers: usage errors (exit 2, one line); suspicious ones warn
  4. results that would be silently wrong: refused or warned
  5. noise: a user sees only what concerns them
The second battery (outputs that are inputs, locks, NaN scores, pipes, ...) is
tests/test_outputs_never_lose_data_or_rank_nan.py. Input-file errors naming file:line live in tests/test_input_errors_name_file_and_line.py, cache
corruption in tests/test_embedding_cache_detects_corruption.py, file modes in
tests/test_atomic_writes_keep_file_modes.py.
"""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers_cli import one_line_error
from helpers_processes import sigint_default
from perank_jax.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def eval_files(tmp_path):
    (tmp_path / "qrels.txt").write_text("q1 0 d1 2\nq1 0 d2 0\nq2 0 d3 1\n")
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 3.0 x\nq1 Q0 d2 2 2.0 x\nq2 Q0 d3 1 1.0 x\n")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in
                                                   [("d1", "cats purr"), ("d2", "dogs bark"), ("d3", "rivers flow")]))
    (tmp_path / "queries.tsv").write_text("q1\tcats\nq2\trivers\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep me\n")
    return tmp_path


# --- 1. outputs -----------------------------------------------------------------------------
def output_cases(t):
    """(argv, expected message) for every command given an output of the wrong kind."""
    req = t / "req.jsonl"
    req.write_text(json.dumps({"query": {"text": "q", "qid": "1"},
                               "candidates": [{"docid": "d1", "doc": {"contents": "x"}, "score": 1.0}]}) + "\n")
    ev = ["--qrels", str(t / "qrels.txt"), "--run", str(t / "run.trec")]
    tables = t / "tables.yaml"
    tables.write_text(f"out_dir: {t / 'afile'}\ndatasets: [{{name: x, requests: {req}, qrels: {t / 'qrels.txt'}}}]\n"
                      "methods: [{name: bm25, kind: first_stage}]\n")
    return [
        (["rerank", "--requests", str(req), "--out", str(t / "adir")], "is a directory"),
        (["rerank", "--requests", str(req), "--out", str(t / "o.trec"), "--stats", str(t / "adir")], "is a directory"),
        (["rerank", "--requests", str(req), "--out", str(t / "afile"), "--stats", str(t / "afile")], "two outputs"),
        (["rerank", "--requests", str(req), "--stats", str(t / "s.jsonl")], "--stats needs --out"),
        (["evaluate", *ev, "--json", str(t / "adir")], "is a directory"),
        (["retrieve", "--corpus", str(t / "corpus.jsonl"), "--queries", str(t / "queries.tsv"),
          "--out", str(t / "adir")], "is a directory"),
        (["encode", "--encoder", str(t / "adir"), "--corpus", str(t / "corpus.jsonl"), "--out", str(t / "afile")],
         "is a file"),
        (["convert", str(t / "model.gguf"), str(t / "afile")], "is a file"),
        (["train", str(ROOT / "configs" / "tiny.stage2.yaml"), f"output_dir={t / 'afile'}"], "is a file"),
        (["tables", str(tables)], "is a file"),
        (["data", "fetch", "--out", str(t / "afile")], "is a file"),
    ]


@pytest.mark.parametrize("i", range(11))
def test_an_output_path_of_the_wrong_kind_is_refused_in_one_line_before_any_work(eval_files, capsys, i):
    argv, expect = output_cases(eval_files)[i]
    before = {p.name: p.read_bytes() for p in eval_files.iterdir() if p.is_file()}
    one_line_error(capsys, main(argv), expect)
    after = {p.name: p.read_bytes() for p in eval_files.iterdir() if p.is_file()}
    assert after == before and list((eval_files / "adir").iterdir()) == []


def test_evaluate_json_never_touches_a_users_file_named_like_a_temp_file(eval_files, capsys):
    for name in ("res.tmp", ".res.json.tmp"):
        (eval_files / name).write_text("the user's notes\n")
    assert main(["evaluate", "--qrels", str(eval_files / "qrels.txt"), "--run", str(eval_files / "run.trec"),
                 "--json", str(eval_files / "res.json")]) == 0
    res = json.loads((eval_files / "res.json").read_text())
    assert res["run"]["aggregate"]["nDCG@10"] == pytest.approx(1.0)
    for name in ("res.tmp", ".res.json.tmp"):
        assert (eval_files / name).read_text() == "the user's notes\n"
    assert sorted(p.name for p in eval_files.iterdir()) == sorted(
        [".res.json.tmp", "adir", "afile", "corpus.jsonl", "qrels.txt", "queries.tsv", "res.json", "res.tmp",
         "run.trec"])


# --- 2. interrupts ----------------------------------------------------------------------------
@pytest.mark.parametrize("when,sig", [
    (r"\b[1-9]\d*/400\b", signal.SIGINT),                   # queries are being reranked
    (r"0/400", signal.SIGINT),  # the progress bar is up, the first compile runs (Ctrl-C used to be lost in
                                # jax's _xla_gc_callback; perank_jax/core/interrupts.py latches it)
    (r"\b[1-9]\d*/400\b", signal.SIGTERM),                  # `kill`: the same, exit 143
], ids=["while-reranking", "during-first-compile", "sigterm-while-reranking"])
def test_ctrl_c_during_rerank_exits_130_and_leaves_the_previous_output_untouched(tmp_path, tiny_perank, when, sig):
    ckpt = tiny_perank[0]
    cand = [{"docid": f"d{i}", "doc": {"contents": f"passage number {i} " * 20}, "score": 100.0 - i}
            for i in range(40)]
    (tmp_path / "req.jsonl").write_text("".join(json.dumps({"query": {"text": f"query {q}", "qid": str(q)},
                                                            "candidates": cand}) + "\n" for q in range(400)))
    out = tmp_path / "out.trec"
    out.write_text("previous run\n")
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "perank_jax.cli", "rerank", "--model", str(ckpt),
                                 "--requests", str(tmp_path / "req.jsonl"), "--out", str(out)],
                                stdout=f, stderr=subprocess.STDOUT, preexec_fn=sigint_default,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))   # the progress bar reaches the
        deadline = time.time() + 300                                           # log at once, not at exit
        while proc.poll() is None and time.time() < deadline and not re.search(when, log.read_text()):
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    text = log.read_text()
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), text[-3000:]
    assert ("interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)") in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert out.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "out.trec", "req.jsonl"]


@pytest.mark.parametrize("command", ["rerank", "tables"])
def test_a_ctrl_c_that_python_drops_still_stops_the_run_before_any_output(tmp_path, tiny_perank, monkeypatch,
                                                                           capsys, command):
    """Ctrl-C lands while the garbage collector runs a callback (as it did in jax's _xla_gc_callback
    during the first XLA compilation): Python prints and drops the KeyboardInterrupt raised there.
    The run must still stop: exit 130 at the next query boundary, no traceback, the previous
    output untouched and nothing new written."""
    import gc
    from perank_jax.inference.ranker import PERanker
    ckpt = tiny_perank[0]
    real = PERanker.rerank_batch

    def swallowing(self, *a, **k):
        def callback(phase, info):
            if phase == "start":
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)                # the handler runs (and raises) in here, and gc drops it
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        return real(self, *a, **k)
    monkeypatch.setattr(PERanker, "rerank_batch", swallowing)
    monkeypatch.setattr(PERanker, "rerank", lambda self, q, c, **k: swallowing(self, [q], [c], **k)[0])
    printed = []                                      # what Python would print as "Exception ignored in"
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(u.exc_type))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, even in a
    request_cleanup = lambda: signal.signal(signal.SIGINT, previous)       # background job  # noqa: E731
    cand = [{"docid": f"d{i}", "doc": {"contents": f"passage number {i}"}, "score": 9.0 - i} for i in range(8)]
    (tmp_path / "req.jsonl").write_text("".join(json.dumps({"query": {"text": f"query {q}", "qid": str(q)},
                                                            "candidates": cand}) + "\n" for q in range(3)))
    out = tmp_path / "out.trec"
    out.write_text("previous run\n")
    if command == "rerank":
        argv = ["rerank", "--model", str(ckpt), "--requests", str(tmp_path / "req.jsonl"), "--out", str(out)]
    else:
        (tmp_path / "c.tsv").write_text("".join(f"d{i}\tpassage number {i}\n" for i in range(8)))
        (tmp_path / "q.tsv").write_text("".join(f"{q}\tquery {q}\n" for q in range(3)))
        (tmp_path / "run.trec").write_text("".join(f"{q} Q0 d{i} {i + 1} {9 - i} bm25\n" for q in range(3)
                                                   for i in range(8)))
        (tmp_path / "qrels.txt").write_text("0 0 d1 1\n")
        (tmp_path / "t.yaml").write_text(json.dumps({
            "datasets": [{"name": "t", "queries": str(tmp_path / "q.tsv"), "run": str(tmp_path / "run.trec"),
                          "corpus": str(tmp_path / "c.tsv"), "qrels": str(tmp_path / "qrels.txt")}],
            "methods": [{"name": "PE", "kind": "perank", "checkpoint": str(ckpt)}],
            "depth": 8, "efficiency_depths": [], "warmup": False, "out_dir": str(tmp_path / "tables")}))
        argv = ["tables", str(tmp_path / "t.yaml")]
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = main(argv)
        handler_after = signal.getsignal(signal.SIGINT)
    finally:
        request_cleanup()
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and not printed, (err, printed)
    assert out.read_text() == "previous run\n"
    made = sorted(p.name for p in tmp_path.iterdir() if p.name not in before)
    assert made == ([] if command == "rerank" else ["tables"])    # tables makes its out_dir up front ...
    assert not [p for p in (tmp_path / "tables").rglob("*") if p.is_file()]   # ... and writes nothing in it
    assert handler_after is signal.default_int_handler, "the previous SIGINT handler was not restored"


# --- 3. impossible numbers ------------------------------------------------------------------
NUMBER_CASES = [
    (["rerank", "--depth", "0"], "--depth must be >= 1, got 0"),
    (["rerank", "--depth", "-1", "--requests", "r.jsonl"], "--depth must be >= 1, got -1"),
    (["rerank", "--depth", "-1", "--run", "r", "--corpus", "c", "--queries", "q"], "--depth must be >= 1, got -1"),
    (["rerank", "--window", "-2"], "--window must be 0 or in [2, 1048576], got -2"),
    (["rerank", "--stride", "0"], "--stride must be in [1, 1048576], got 0"),
    (["rerank", "--top-k", "0"], "--top-k must be in [1, 1048576], got 0"),
    (["rerank", "--batch-queries", "0"], "--batch-queries must be >= 1, got 0"),
    (["rerank", "--show", "-1"], "--show must be >= 0, got -1"),
    (["rerank", "--query-scale", "0"], "--query-scale must be > 0 and <= 1e+06, got 0.0"),
    (["rerank", "--query-scale", "nan"], "--query-scale must be > 0 and <= 1e+06, got nan"),
    (["rerank", "--query-feedback", "1"], "--query-feedback: expected 2 arguments"),
    (["rerank", "--query-feedback", "-1", "0.01"], "--query-feedback weight must be >= 0 and <= 1e+06, got -1.0"),
    (["rerank", "--query-feedback", "1", "0"], "--query-feedback temperature must be > 0 and <= 1e+06, got 0.0"),
    (["rerank", "--depth", "ten"], "'ten' is not an integer"),
    (["rerank", "--mesh", "data=0"], "--mesh: 'data=0': expected AXIS=SIZE"),
    (["rerank", "--mesh", "gpus=2"], "--mesh: 'gpus=2': expected AXIS=SIZE"),
    (["encode", "--encoder", "e", "--corpus", "c", "--out", "o", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["encode", "--encoder", "e", "--corpus", "c", "--out", "o", "--max-length", "1"], "--max-length must be in [2, 1048576], got 1"),
    (["encode", "--encoder", "e", "--corpus", "c", "--out", "o", "--chunk-size", "-5"], "--chunk-size must be >= 1, got -5"),
    (["retrieve", "--corpus", "c", "--queries", "q", "--out", "o", "--k", "0"], "--k must be >= 1, got 0"),
    (["retrieve", "--corpus", "c", "--queries", "q", "--out", "o", "--b", "1.5"], "--b must be >= 0 and <= 1, got 1.5"),
    (["retrieve", "--corpus", "c", "--queries", "q", "--out", "o", "--k1", "nan"], "--k1 must be >= 0, got nan"),
    (["generate", "--max-new-tokens", "0", "hello"], "--max-new-tokens must be >= 1, got 0"),
    (["rerank", "--part-queries", "0"], "--part-queries must be >= 1, got 0"),
    (["encode", "--corpus", "c", "--out", "o", "--num-processes", "0"], "--num-processes must be >= 1, got 0"),
    (["rerank", "--process-id", "-1"], "--process-id must be >= 0, got -1"),
    (["rerank", "--distributed", "--out", "x.trec", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2 must be below --num-processes 2"),
    (["serve", "--port", "70000"], "--port must be in [0, 65535], got 70000"),
    (["serve", "--max-batch", "0"], "--max-batch must be >= 1, got 0"),
    (["serve", "--deadline", "0"], "--deadline must be > 0, got 0.0"),
    (["serve", "--max-wait-ms", "-1"], "--max-wait-ms must be >= 0, got -1.0"),
    (["serve", "--window", "1"], "--window must be 0 or in [2, 1048576], got 1"),
    (["serve", "--window", "4", "--stride", "6"], "serve setting stride must be <= window (4), got 6"),
]


@pytest.mark.parametrize("argv,expect", NUMBER_CASES, ids=[" ".join(a[:3]) for a, _ in NUMBER_CASES])
def test_an_impossible_number_is_a_one_line_usage_error(argv, expect, capsys):
    one_line_error(capsys, main(argv), expect)


@pytest.mark.parametrize("argv,expect", [
    (["rerank", "--process-id", "1"], "--process-id needs --distributed"),
    (["encode", "--corpus", "c", "--out", "o", "--coordinator-address", "h:1"], "--coordinator-address needs --distributed"),
    (["rerank", "--distributed"], "--distributed needs --out"),
], ids=["process-id", "coordinator", "no-out"])
def test_distributed_flags_out_of_place_are_one_line_errors_before_any_work(argv, expect, capsys, tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, main(argv), expect)
    assert list(tmp_path.iterdir()) == []


def test_serve_on_a_port_in_use_is_one_error_line_before_the_model_loads(capsys):
    pytest.importorskip("fastapi")
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        t = time.monotonic()
        one_line_error(capsys, main(["serve", "--port", str(port), "--model", "/nonexistent"]),
                       f"cannot listen on 127.0.0.1:{port}")
        assert time.monotonic() - t < 30


@pytest.mark.parametrize("override,expect", [
    ("depth=-5", "t.yaml: depth must be >= 1, got -5"), ("window=1", "t.yaml: window must be 0 or in [2, 1048576], got 1"),
    ("efficiency_depths=[20, 0]", "efficiency_depths[1] must be >= 1, got 0"), ("stride=0", "t.yaml: stride must be in [1, 1048576], got 0"),
    ("methods=[{name: p, kind: perank, checkpoint: x, top_k: 0}]", "t.yaml: methods[0].top_k must be in [1, 1048576], got 0"),
    ("methods=[{name: p, kind: perank, checkpoint: x, mode: fast}]", "t.yaml: methods[0].mode must be one of")])
def test_an_impossible_number_in_a_tables_config_is_one_error_naming_the_key(eval_files, capsys, override, expect):
    cfg = eval_files / "t.yaml"
    cfg.write_text(f"out_dir: {eval_files / 'tables'}\ndatasets: [{{name: x, queries: {eval_files / 'queries.tsv'}, "
                   f"run: {eval_files / 'run.trec'}, corpus: {eval_files / 'corpus.jsonl'}, "
                   f"qrels: {eval_files / 'qrels.txt'}}}]\nmethods: [{{name: b, kind: first_stage}}]\n")
    one_line_error(capsys, main(["tables", str(cfg), "--set", override]), expect)
    assert not (eval_files / "tables").exists()


def test_a_window_of_one_is_refused_and_non_overlapping_windows_warn(tmp_path, capsys, tiny_perank):
    req = tmp_path / "req.jsonl"
    req.write_text(json.dumps({"query": {"text": "cats", "qid": "1"},
                               "candidates": [{"docid": f"d{i}", "doc": {"contents": f"text {i}"}, "score": 1.0}
                                              for i in range(6)]}) + "\n")
    one_line_error(capsys, main(["rerank", "--requests", str(req), "--window", "1"]), "--window must be 0 or in")
    assert main(["rerank", "--model", str(tiny_perank[0]), "--requests", str(req), "--window", "3",
                 "--stride", "3", "--out", str(tmp_path / "o.trec")]) == 0
    assert "windows do not overlap" in capsys.readouterr().err


# --- 4. results that would be silently wrong ---------------------------------------------------
def test_evaluate_refuses_a_run_sharing_no_query_with_the_qrels_and_warns_on_partial_overlap(eval_files, capsys):
    (eval_files / "other.trec").write_text("x1 Q0 d1 1 3.0 x\n")
    one_line_error(capsys, main(["evaluate", "--qrels", str(eval_files / "qrels.txt"),
                                 "--run", str(eval_files / "other.trec")]), "shares no query id")
    (eval_files / "half.trec").write_text("q1 Q0 d1 1 3.0 x\n")
    assert main(["evaluate", "--qrels", str(eval_files / "qrels.txt"), "--run", str(eval_files / "half.trec")]) == 0
    assert "answers 1 of the 2 judged queries" in capsys.readouterr().err


@pytest.mark.parametrize("grade", ["99999999999999999999", "3000000000", "-5000"])
def test_an_absurd_qrels_grade_is_one_error_naming_file_and_line(eval_files, capsys, grade):
    (eval_files / "qrels.txt").write_text(f"q1 0 d1 2\nq1 0 d2 {grade}\n")
    one_line_error(capsys, main(["evaluate", "--qrels", str(eval_files / "qrels.txt"), "--run",
                                 str(eval_files / "run.trec")]), "qrels.txt:2: grade")


def test_retrieve_writes_no_hits_for_a_query_matching_nothing_and_says_so(eval_files, capsys):
    (eval_files / "queries.tsv").write_text("q1\tcats\nq9\tzebra xylophone\n")
    out = eval_files / "bm25.trec"
    assert main(["retrieve", "--corpus", str(eval_files / "corpus.jsonl"), "--queries",
                 str(eval_files / "queries.tsv"), "--out", str(out), "--stemmer", "none"]) == 0
    assert "1 of 2 queries match no document" in capsys.readouterr().err
    lines = out.read_text().split("\n")
    assert [ln.split()[:3] for ln in lines if ln] == [["q1", "Q0", "d1"]]     # only the matching document


# --- 5. noise ----------------------------------------------------------------------------------
def test_reranking_with_a_paper_layout_checkpoint_prints_no_transformers_warnings(tmp_path, tiny_perank):
    proc = subprocess.run([sys.executable, "-m", "perank_jax.cli", "rerank", "--model", str(tiny_perank[0]),
                           "--show", "1"], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[ex1]" in proc.stdout
    noise = [ln for ln in proc.stderr.splitlines() if ln.strip() and "query/s" not in ln and "s/query" not in ln]
    assert noise == [], noise
