"""Per-query cost accounting for rerankers: wall latency with XLA compile time taken out
(and reported apart), LLM prompt ("processed") tokens summed over windows, generated tokens.

Compile time is measured from jax.monitoring's compile-duration events, so a query that
happens to hit a new shape bucket is charged its run time, not its compile time.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

import jax

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_lock = threading.Lock()
_compile_total = [0.0]
_registered = [False]


def _listener(event: str, duration: float, **_):
    if event in _COMPILE_EVENTS:
        with _lock:
            _compile_total[0] += float(duration)


def compile_seconds() -> float:
    """Seconds spent tracing/lowering/compiling with jax since the first call (monotonic)."""
    if not _registered[0]:
        jax.monitoring.register_event_duration_secs_listener(_listener)
        _registered[0] = True
    return _compile_total[0]


@dataclass
class QueryCost:
    qid: str
    n_candidates: int
    latency_s: float = 0.0          # wall time minus compile time
    compile_s: float = 0.0
    processed_tokens: int = 0       # LLM prompt tokens, summed over windows (a passage embedding = 1)
    generated_tokens: int = 0       # decode steps, summed over windows
    windows: int = 0


@dataclass
class Usage:
    """What one rerank call reports back to the timer (tokens are the method's own counts)."""
    processed_tokens: int = 0
    generated_tokens: int = 0
    windows: int = 0
    extra: dict = field(default_factory=dict)


def timed(qid: str, n: int, fn, *args, **kwargs):
    """Run fn(*args, **kwargs) -> (result, Usage); return (result, QueryCost)."""
    c0, t0 = compile_seconds(), time.perf_counter()
    result, usage = fn(*args, **kwargs)
    wall, comp = time.perf_counter() - t0, compile_seconds() - c0
    return result, QueryCost(qid, n, max(wall - comp, 0.0), comp, int(usage.processed_tokens),
                             int(usage.generated_tokens), int(usage.windows))


def summarize(costs: list[QueryCost]) -> dict:
    """Means per query (latency, tokens) and total compile seconds."""
    if not costs:
        return {"queries": 0}
    n = len(costs)
    return {"queries": n,
            "latency_s": sum(c.latency_s for c in costs) / n,
            "processed_tokens": sum(c.processed_tokens for c in costs) / n,
            "generated_tokens": sum(c.generated_tokens for c in costs) / n,
            "windows": sum(c.windows for c in costs) / n,
            "compile_s_total": sum(c.compile_s for c in costs)}


def as_dicts(costs: list[QueryCost]) -> list[dict]:
    return [asdict(c) for c in costs]
