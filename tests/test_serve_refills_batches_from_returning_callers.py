"""The batching policy with callers that send their next request as soon as they are answered (closed
loop, as a load test or a pipeline does): with the refill wait, the callers one batch answered come back
into one batch even though their next requests arrive farther apart than `--max-wait-ms`; with it off
they split into smaller batches; a lone caller is never held by it. Real HTTP on loopback, the real app
and scheduler over a stand-in ranker (helpers_serve.SlowRanker)."""
import threading
import time

import pytest

pytest.importorskip("fastapi")
from helpers_serve import SlowRanker, call, serving  # noqa: E402

CALLERS = 4
GAP = 0.008          # caller i waits GAP * (i + 1) s after each answer: 8-32 ms apart, more than max_wait_ms


def closed_loop(base: str, callers: int, rounds: int) -> list[tuple[int, dict]]:
    """`callers` threads started together; each sends `rounds` requests one after the other, pausing
    GAP * (i + 1) s after each answer. Returns every (status, body)."""
    results, lock, start = [], threading.Lock(), threading.Barrier(callers)

    def caller(i):
        start.wait()
        for r in range(rounds):
            status, _, got = call(base, "/v1/rerank", {"query": f"q{i}-{r}", "documents": ["b", "c", "a"]})
            with lock:
                results.append((status, got))
            time.sleep(GAP * (i + 1))
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_callers_answered_together_come_back_into_one_batch_with_the_refill_wait():
    ranker = SlowRanker(delay=1.5)          # the wait is capped at a tenth of the mean batch time: >= 50 ms here
    with serving(ranker, max_batch=CALLERS, max_wait_ms=5, refill_wait_ms=1000) as base:
        results = closed_loop(base, CALLERS, rounds=4)
    assert [s for s, _ in results] == [200] * 4 * CALLERS, results
    assert all(got["results"][0]["index"] == 1 for _, got in results)          # "c" first: each got its own answer
    sizes = [len(b) for b in ranker.batches]
    # the first batch may miss a caller (they start within max_wait_ms of each other, or not); from then
    # on every batch is full, the last one taking whoever the first left behind
    assert sum(sizes) == 4 * CALLERS and len(sizes) <= 5, sizes
    assert sizes[1:-1] and all(n == CALLERS for n in sizes[1:-1]), sizes


def test_without_the_refill_wait_returning_callers_split_into_smaller_batches():
    ranker = SlowRanker(delay=0.3)
    with serving(ranker, max_batch=CALLERS, max_wait_ms=0, refill_wait_ms=0) as base:
        results = closed_loop(base, CALLERS, rounds=2)
    assert [s for s, _ in results] == [200] * 2 * CALLERS, results
    sizes = [len(b) for b in ranker.batches]
    assert sum(sizes) == 2 * CALLERS and min(sizes[1:]) < CALLERS, sizes


def test_a_lone_caller_is_not_held_by_the_refill_wait():
    ranker = SlowRanker(delay=1.0)
    with serving(ranker, max_batch=CALLERS, max_wait_ms=5, refill_wait_ms=1000) as base:
        results = closed_loop(base, 1, rounds=3)
    assert [s for s, _ in results] == [200] * 3 and [len(b) for b in ranker.batches] == [1, 1, 1]
    queued_ms = [got["meta"]["latency_ms"]["queue"] for _, got in results]
    assert max(queued_ms) < 30, queued_ms       # max_wait_ms (5) and scheduling, not the refill's >= 50 ms
