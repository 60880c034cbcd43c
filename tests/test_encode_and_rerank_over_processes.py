"""`perank encode` and `perank rerank` as two CPU processes over jax.distributed (gloo), launched
like training (--distributed + coordinator flags): one process dies hard in the middle (SIGKILL right
after its first chunk / part, then the job is killed), no final output is left, and the rerun resumes
from the finished chunks / parts and ends with the files a one-process run writes: the cache byte
for byte, the TREC run byte for byte and the stats sidecar equal apart from timings."""
import json

import pytest

from helpers_processes import THEN, run_cli
from perank_jax.cli import main

TIMINGS = {"latency_s", "latency_no_encode_s", "encode_s", "compile_s"}
WORDS = "cats dogs rivers banks loans trees music pianos courts cities fish birds".split()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("mp")
    (d / "docs.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "title": WORDS[i % 12] if i % 3 else "",
                    "text": f"document {i} is about {WORDS[(i * 5) % 12]} and {WORDS[(i * 7) % 12]}"}) + "\n"
        for i in range(36)))
    (d / "queries.tsv").write_text("".join(f"q{q}\t{WORDS[q]} and {WORDS[(q + 4) % 12]}\n" for q in range(8)))
    (d / "run.trec").write_text("".join(f"q{q} Q0 d{(5 * q + k) % 36} {k + 1} {30 - k} bm25\n"
                                        for q in range(8) for k in range(8)))
    (d / "jax_cache").mkdir()          # compiled programs shared by the launches of this module
    return d


@pytest.mark.slow
def test_two_processes_encode_and_rerank_into_the_one_process_outputs_resuming_after_one_dies(
        inputs, tmp_path, tiny_perank_dir_32):
    """Three launches of two processes (each launch pays for starting jax and joining the job once):
    encode, one process dying after its first chunk; the encode resumed, then a rerank whose process 1
    dies after its first part; the rerank resumed. Each ends with the one-process files."""
    enc = ["encode", "--model", str(tiny_perank_dir_32), "--corpus", str(inputs / "docs.jsonl"),
           "--chunk-size", "4", "--batch-size", "4", "--quiet"]
    rr = ["rerank", "--model", str(tiny_perank_dir_32), "--run", str(inputs / "run.trec"),
          "--corpus", str(inputs / "docs.jsonl"), "--queries", str(inputs / "queries.tsv"),
          "--window", "0", "--batch-queries", "2"]             # one window per query: few compiles
    assert main([*enc, "--out", str(tmp_path / "one")]) == 0
    assert main([*rr, "--out", str(tmp_path / "one.trec")]) == 0
    two, out, parts = tmp_path / "two", tmp_path / "two.trec", tmp_path / "two.trec.parts"
    mp = [*rr, "--out", str(out), "--part-queries", "2"]      # 4 parts of 2 queries

    # encode: process 1 dies after its first chunk
    died = run_cli([*enc, "--out", str(two)], die=(1, 1, "chunk_*.sha256"), compile_cache=inputs / "jax_cache")
    assert died[1][0] != 0, died[1][1][-2000:]
    assert not (two / "metadata.json").exists() and not (two / "embeddings.npy").exists()
    left = sorted(p.name for p in (two / ".partial").glob("chunk_*.sha256"))
    assert 1 <= len(left) < 9, left                     # 9 chunks: some done, not all

    # one launch: the encode resumes and ends; then the rerank, process 1 dying after its first part
    died = run_cli([*enc, "--out", str(two), THEN, *mp], die=(1, 1, "part_*.jsonl"),
                   compile_cache=inputs / "jax_cache")
    for code, log in died:
        assert "command 0 exited 0" in log, log[-3000:]      # the encode resumed and succeeded
    for f in ("embeddings.npy", "docids.txt", "metadata.json"):
        assert (two / f).read_bytes() == (tmp_path / "one" / f).read_bytes(), f
    assert not (two / ".partial").exists()
    assert died[1][0] != 0, died[1][1][-2000:]
    assert not out.exists() and not (tmp_path / "two.trec.stats.jsonl").exists()
    left = sorted(p.name for p in parts.glob("part_*.jsonl"))
    assert 1 <= len(left) < 4 and (parts / "plan.json").is_file(), left

    # the rerank resumes
    for code, log in run_cli(mp, compile_cache=inputs / "jax_cache"):
        assert code == 0, log[-3000:]
    assert out.read_bytes() == (tmp_path / "one.trec").read_bytes()
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}  # noqa: E731
                       for line in p.read_text().splitlines()]
    assert strip(tmp_path / "two.trec.stats.jsonl") == strip(tmp_path / "one.trec.stats.jsonl")
    assert len(strip(tmp_path / "one.trec.stats.jsonl")) == 8 and not parts.exists()


def test_parts_of_a_run_with_other_settings_are_refused_before_any_work(tmp_path):
    from perank_jax.data.trec import Candidate, DataError, Request
    from perank_jax.inference.rerank_parts import parts_dir, rerank_in_parts
    requests = [Request("q1", "cats", [Candidate("d1", 1.0, "a cat"), Candidate("d2", 0.5, "a dog")])]
    out = tmp_path / "x.trec"
    kw = dict(settings={"model": "m"}, part_queries=2)
    parts_dir(out).mkdir()
    (parts_dir(out) / "plan.json").write_text(json.dumps({"version": 1, "fingerprint": "another run"}))
    with pytest.raises(DataError, match="holds parts of a run with other inputs or settings"):
        rerank_in_parts(None, requests, out, tmp_path / "s.jsonl", **kw)     # the ranker is never touched
    assert not out.exists()
