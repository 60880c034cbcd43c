"""Layer 5, `perank serve`: an HTTP rerank server that batches concurrent requests over the compiled decode.

    settings.py   ServeSettings: decoding defaults, batching limits, request limits (checked once)
    schemas.py    the request/response shapes (Cohere/Jina `/v1/rerank`, TEI `/rerank`) and their checks
    scheduler.py  Scheduler: the one thread that owns the device, collects requests into batches
    warmup.py     the compiled shapes a server serves, compiled before it reports ready
    metrics.py    Prometheus counters and histograms, and the jax compile counter
    app.py        the FastAPI application (routes, error shapes, body-size limit)
    server.py     load the ranker, start uvicorn, drain on SIGTERM (what `perank serve` runs)

The ASGI stack (fastapi, uvicorn) is the optional extra `perank-jax[serve]`; nothing outside
this package imports it. docs/serving.md describes the API and the batching policy.
"""
from perank_jax.serve.server import run_server
from perank_jax.serve.settings import ServeSettings

__all__ = ["ServeSettings", "run_server"]
