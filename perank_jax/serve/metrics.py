"""Prometheus metrics of one server (its own registry) and the count of XLA compilations.

Every XLA compilation in the process, jitted or eager, is counted from jax.monitoring's
backend-compile event; `perank_compiles_after_warmup_total` is what a server compiled while serving
(0 while requests stay within the warmed-up shapes, see warmup.py).
"""
from __future__ import annotations

import threading

from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for app.py)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = {"count": 0}
_lock = threading.Lock()
_registered = False


def _on_duration(event: str, duration: float, **kwargs) -> None:
    if event == COMPILE_EVENT:
        with _lock:
            _compiles["count"] += 1


def compile_count() -> int:
    """XLA compilations in this process since the listener was installed (install_compile_listener)."""
    return _compiles["count"]


def install_compile_listener() -> None:
    global _registered
    with _lock:
        if not _registered:
            import jax.monitoring
            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            _registered = True


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServeMetrics:
    def __init__(self):
        install_compile_listener()
        disable_created_metrics()             # no *_created series: counts and histograms only
        r = self.registry = CollectorRegistry()
        self.requests = Counter("perank_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.errors = Counter("perank_errors", "requests answered with an error, by kind", ["kind"], registry=r)
        self.queue_depth = Gauge("perank_queue_depth", "requests waiting for the scheduler", registry=r)
        self.batch_size = Histogram("perank_batch_size", "requests decoded together per batch",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=r)
        self.latency = Histogram("perank_request_latency_seconds", "rerank request latency (arrival to answer)",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("perank_queue_wait_seconds", "time a request waited before its batch ran",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_seconds = Histogram("perank_batch_seconds", "device time of one batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.processed_tokens = Counter("perank_processed_tokens", "LLM prompt tokens prefilled", registry=r)
        self.generated_tokens = Counter("perank_generated_tokens", "decode steps", registry=r)
        self.ready = Gauge("perank_ready", "1 once warm-up has compiled every served shape", registry=r)
        self.warmup_seconds = Gauge("perank_warmup_seconds", "time warm-up took", registry=r)
        self.warmup_compiles = Gauge("perank_warmup_compiles", "XLA compilations during warm-up", registry=r)
        self.compiles_at_ready = None
        Gauge("perank_compiles", "XLA compilations in this process", registry=r).set_function(compile_count)
        Gauge("perank_compiles_after_warmup", "XLA compilations since warm-up ended (0 within warmed shapes)",
              registry=r).set_function(lambda: 0 if self.compiles_at_ready is None
                                       else compile_count() - self.compiles_at_ready)

    def mark_ready(self, seconds: float, compiles: int) -> None:
        self.warmup_seconds.set(seconds)
        self.warmup_compiles.set(compiles)
        self.compiles_at_ready = compile_count()
        self.ready.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
