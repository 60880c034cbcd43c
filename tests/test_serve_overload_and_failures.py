"""`perank serve` under overload and failure, with a stand-in ranker whose speed and failures the test
sets (real HTTP on loopback, the real app and scheduler; no model): a full queue answers 503 +
Retry-After at once, a request past its deadline gets 504 and never runs, a request that raises gets
500 while its batch mates are answered, and the server keeps serving after each."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
from helpers_serve import SlowRanker, call, metric, serving  # noqa: E402


def body(query, docs=("b", "c", "a")):
    return {"query": query, "documents": list(docs)}


def in_parallel(base, bodies, stagger=0.0):
    def send(i_b):
        time.sleep(stagger * i_b[0])
        t = time.monotonic()
        status, headers, got = call(base, "/v1/rerank", i_b[1])
        return status, headers, got, time.monotonic() - t
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, enumerate(bodies)))


def test_a_full_queue_answers_503_with_retry_after_at_once_then_serves_again():
    ranker = SlowRanker(delay=0.4)
    with serving(ranker, max_batch=1, queue_size=2, max_wait_ms=0) as base:
        answers = in_parallel(base, [body(f"q{i}") for i in range(8)])
        refused = [a for a in answers if a[0] == 503]
        served = [a for a in answers if a[0] == 200]
        assert len(refused) + len(served) == 8 and refused and len(served) >= 2   # running + queued
        for status, headers, got, seconds in refused:
            assert int(headers["retry-after"]) >= 1 and got["error"]["kind"] == "overloaded"
            assert seconds < 0.35                              # at once, not after a batch
        assert metric(base, "perank_errors_total", kind="overloaded") == len(refused)
        assert call(base, "/v1/rerank", body("again"))[0] == 200
        assert call(base, "/health")[0] == 200


def test_a_request_past_its_deadline_gets_504_and_leaves_the_queue():
    ranker = SlowRanker(delay=0.35)
    with serving(ranker, max_batch=1, deadline_s=0.5, max_wait_ms=0) as base:
        (s1, _, a1, _), (s2, _, a2, _), (s3, _, a3, _) = in_parallel(
            base, [body("first"), body("second"), body("third")], stagger=0.02)
        assert s1 == 200 and [r["index"] for r in a1["results"]] == [1, 0, 2]
        assert s2 == 504 and a2["error"]["kind"] == "deadline"       # running when its time ran out
        assert s3 == 504 and a3["error"]["kind"] == "deadline"       # still queued: taken out, never run
        time.sleep(0.4)
        assert ["third"] not in ranker.batches and metric(base, "perank_queue_depth") == 0
        assert call(base, "/v1/rerank", body("after"))[0] == 200


def test_a_request_that_raises_gets_500_alone_and_its_batch_mates_are_answered():
    ranker = SlowRanker(delay=0.05)
    with serving(ranker, max_batch=4, max_wait_ms=300) as base:
        answers = in_parallel(base, [body("q0"), body("boom"), body("q2", "xyz"), body("q3", "pq")])
        assert len(ranker.batches[0]) == 4                             # they were batched together
        assert [a[0] for a in answers] == [200, 500, 200, 200]
        assert answers[1][2]["error"]["kind"] == "internal" and "planted failure" in answers[1][2]["error"]["message"]
        assert [r["index"] for r in answers[2][2]["results"]] == [2, 1, 0]      # z > y > x: its own docs
        assert [r["index"] for r in answers[3][2]["results"]] == [1, 0]
        assert call(base, "/v1/rerank", body("later"))[0] == 200 and call(base, "/health")[0] == 200
        assert metric(base, "perank_errors_total", kind="internal") == 1


def test_a_body_over_the_limit_gets_413_naming_the_body():
    with serving(SlowRanker(delay=0.0), max_body_bytes=200) as base:
        status, _, got = call(base, "/v1/rerank", body("q", ["x" * 300]))
        assert status == 413 and got["error"]["field"] == "body"
        assert call(base, "/v1/rerank", body("q"))[0] == 200
