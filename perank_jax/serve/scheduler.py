"""Scheduler: the one thread that owns the device and turns waiting requests into batches.

Policy (docs/serving.md): when the device is free, take the oldest waiting request and keep
collecting until `max_batch` requests or `max_wait_ms` after the first was taken (longer, up to
`refill_wait_ms` after the last batch was answered, while fewer are waiting than that batch
answered: its callers are likely to send their next request), then decode them together with one
`PERanker.rerank_batch` call and hand each caller its own ranking. The queue is
bounded (`submit` refuses at once with 503 when full), a request past its deadline leaves the queue
(504), and a batch that raises is retried one request at a time so only the failing request errs.
Before serving, the thread runs the warm-up (warmup.py) so no request waits for a compile.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field

from perank_jax.serve.schemas import RequestError

log = logging.getLogger("perank.serve")
REFILL_FRACTION = 0.1       # the refill wait is at most this fraction of the recent mean batch time


@dataclass
class Job:
    query: str
    texts: list[str]
    docids: list
    deadline: float                                  # time.monotonic() by which it must be answered
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)   # -> Answer, or a RequestError / other exception


@dataclass
class Answer:
    order: list[int]                # permutation of the documents, best first
    stats: dict                     # the ranker's RerankStats for this query
    batch_size: int                 # requests decoded together with this one
    queue_s: float                  # arrival -> its batch started
    compute_s: float                # its batch's device time


class Scheduler:
    def __init__(self, ranker, settings, metrics, warmup=None, on_fatal=None):
        """warmup: f(ranker) run on the scheduler thread before it reports ready; on_fatal:
        called with the exception if loading or warm-up fails (the server then stops)."""
        self.ranker, self.settings, self.metrics = ranker, settings, metrics
        self.mode = settings.mode or ranker.config.default_mode
        self._warmup, self._on_fatal = warmup, on_fatal
        self._queue: list[Job] = []
        self._cond = threading.Condition()
        self._closing = False
        self.ready = False
        self.failed: BaseException | None = None
        self._mean_batch_s = 0.5
        self._answered, self._answered_at = 0, 0.0      # size and end time of the last batch answered
        self._thread = threading.Thread(target=self._main, name="perank-scheduler", daemon=True)

    # --- the caller's side (event loop) ---------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> Future:
        with self._cond:
            if self._closing:
                raise RequestError(503, "shutting_down", None, "the server is shutting down",
                                   {"Retry-After": "1"})
            if not self.ready:
                raise RequestError(503, "not_ready", None, "the server is warming up (compiling); see /health",
                                   {"Retry-After": "5"})
            if len(self._queue) >= self.settings.queue_size:
                wait = math.ceil(len(self._queue) / self.settings.max_batch * self._mean_batch_s)
                raise RequestError(503, "overloaded", None,
                                   f"the queue is full ({self.settings.queue_size} requests waiting)",
                                   {"Retry-After": str(max(1, wait))})
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify()
        return job.future

    def cancel(self, job: Job) -> None:
        """Take a job that is still waiting out of the queue (its caller gave up: deadline)."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                self.metrics.queue_depth.set(len(self._queue))
        job.future.cancel()

    def close(self, grace_s: float) -> None:
        """Stop taking requests, finish the queued ones within grace_s, refuse what is left."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(grace_s)
        with self._cond:
            left, self._queue = self._queue, []
        for job in left:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RequestError(503, "shutting_down", None,
                                                      "the server stopped before this request ran"))

    # --- the device's side (scheduler thread) ---------------------------------------------
    def _main(self) -> None:
        try:
            if self._warmup is not None:
                self._warmup(self.ranker)
            self.ready = True
        except BaseException as e:              # noqa: BLE001 - reported, then the server stops
            log.error("warm-up failed: %s\n%s", e, traceback.format_exc())
            self.failed = e
            if self._on_fatal is not None:
                self._on_fatal(e)
            return
        while True:
            batch = self._collect()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _collect(self) -> list[Job] | None:
        """The next batch (may be empty when every taken job had expired); None: closed and empty."""
        s = self.settings
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            until = time.monotonic() + s.max_wait_ms / 1000
            refill_until = self._answered_at + min(s.refill_wait_ms / 1000, REFILL_FRACTION * self._mean_batch_s)
            expected = min(s.max_batch, self._answered)
            while len(self._queue) < s.max_batch and not self._closing:
                end = max(until, refill_until) if len(self._queue) < expected else until
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken, self._queue = self._queue[:s.max_batch], self._queue[s.max_batch:]
            self.metrics.queue_depth.set(len(self._queue))
        now, batch = time.monotonic(), []
        for job in taken:
            if not job.future.set_running_or_notify_cancel():
                continue                                    # its caller gave up
            if now > job.deadline:
                self.metrics.errors.labels("deadline").inc()
                job.future.set_exception(RequestError(504, "deadline", None,
                                                      f"not started within its deadline ({s.deadline_s} s)"))
                continue
            batch.append(job)
        return batch

    def _run(self, batch: list[Job]) -> None:
        s = self.settings
        t0 = time.monotonic()
        try:
            orders = self.ranker.rerank_batch([j.query for j in batch], [j.texts for j in batch],
                                              window=s.window, stride=s.stride, top_k=s.top_k, mode=self.mode,
                                              docids=[j.docids for j in batch])
            stats = [st.to_dict() for st in self.ranker.last_stats]
        except Exception as e:                  # noqa: BLE001 - isolate the request(s) at fault
            if len(batch) > 1:
                log.warning("a batch of %d failed (%s); running its requests one by one", len(batch), e)
                for job in batch:
                    self._run([job])
                return
            log.error("request failed: %s\n%s", e, traceback.format_exc())
            batch[0].future.set_exception(e)
            return
        dt = time.monotonic() - t0
        self._mean_batch_s = 0.8 * self._mean_batch_s + 0.2 * dt
        m = self.metrics
        m.batch_size.observe(len(batch))
        m.batch_seconds.observe(dt)
        for job, order, st in zip(batch, orders, stats):
            m.queue_wait.observe(t0 - job.arrived)
            m.processed_tokens.inc(st["processed_tokens"])
            m.generated_tokens.inc(st["generated_tokens"])
            job.future.set_result(Answer(order, st, len(batch), t0 - job.arrived, dt))
        self._answered, self._answered_at = len(batch), time.monotonic()
