"""The FastAPI application: the rerank routes, /health, /metrics, error shapes, the body-size limit.

Handlers only check a request and wait for the scheduler's answer (asyncio, never blocking the
event loop); the device work runs on the scheduler's thread. Every error is JSON
{"error": {"kind", "field", "message"}} with its status (docs/serving.md has the table).
"""
from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from perank_jax.serve.metrics import CONTENT_TYPE_LATEST
from perank_jax.serve.scheduler import Job
from perank_jax.serve.schemas import (RequestError, RerankRequest, RerankResponse, TEIRequest, TEIResult,
                                      check_documents, check_query, describe)

RERANK_ROUTES = ("/v1/rerank", "/rerank")


class Guard:
    """ASGI middleware: refuses a body over `max_body_bytes` (413) before the app sees it, and counts
    every response by route and status (and the latency of the rerank routes)."""

    def __init__(self, app, max_body_bytes: int, metrics):
        self.app, self.max_body, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, path = time.monotonic(), {"code": 500}, scope.get("path", "")

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            too_big = length is not None and length.isdigit() and int(length) > self.max_body
            chunks, size = [], 0
            while not too_big and scope.get("method") in ("POST", "PUT"):
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                too_big = size > self.max_body
                if not message.get("more_body"):
                    break
            if too_big:
                err = RequestError(413, "body_too_large", "body", f"is larger than this server's limit of "
                                                                  f"{self.max_body} bytes")
                self.metrics.errors.labels(err.kind).inc()
                return await JSONResponse(err.body(), 413)(scope, receive, counted_send)
            if scope.get("method") in ("POST", "PUT"):
                body = b"".join(chunks)

                async def replay():
                    nonlocal body
                    out, body = body, b""
                    return {"type": "http.request", "body": out, "more_body": False}
                receive = replay
            await self.app(scope, receive, counted_send)
        finally:
            route = path if path in RERANK_ROUTES or path in ("/health", "/metrics") else "other"
            self.metrics.requests.labels(route, str(status["code"])).inc()
            if route in RERANK_ROUTES:
                self.metrics.latency.labels(route).observe(time.monotonic() - t0)


def create_app(scheduler, settings, metrics, *, tokenizer, cache_index=None) -> FastAPI:
    app = FastAPI(title="perank serve", version="1",
                  description="PE-Rank listwise reranking over HTTP (docs/serving.md). relevance_score = "
                              "(n - rank) / n for a document at rank 0..n-1: 1.0 for the best, monotone "
                              "with the ranking, not comparable across queries.")
    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes, metrics=metrics)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        metrics.errors.labels(e.kind).inc()
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            kind, field = "invalid_json", "body"
            msg = f"is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')} at character " \
                  f"{first['loc'][-1]})"
        else:
            kind, (field, msg) = "invalid_request", describe(e.errors())
        err = RequestError(422, kind, field, msg)
        metrics.errors.labels(kind).inc()
        return JSONResponse(err.body(), 422)

    async def rank(query: str, documents, field: str):
        check_query(query, tokenizer, settings)
        docs = check_documents(documents, settings, cache_index, field)
        job = Job(query, [t for t, _ in docs], [d for _, d in docs], time.monotonic() + settings.deadline_s)
        future = scheduler.submit(job)
        try:
            return docs, await asyncio.wait_for(asyncio.wrap_future(future), settings.deadline_s)
        except asyncio.TimeoutError:
            scheduler.cancel(job)
            raise RequestError(504, "deadline", None, f"not answered within {settings.deadline_s} s")
        except RequestError:
            raise
        except Exception as e:          # noqa: BLE001 - this request alone fails; the server keeps serving
            raise RequestError(500, "internal", None, f"reranking failed: {type(e).__name__}: {e}")

    @app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True,
              summary="Cohere / Jina shaped rerank")
    async def rerank_v1(body: RerankRequest):
        t0 = time.monotonic()
        docs, ans = await rank(body.query, body.documents, "documents")
        n = len(ans.order)
        results = []
        for r, i in enumerate(ans.order[:body.top_n or n]):
            doc = None
            if body.return_documents:
                text, docid = docs[i]
                doc = {k: v for k, v in (("text", text or None), ("id", docid)) if v is not None}
            results.append({"index": i, "relevance_score": (n - r) / n, "document": doc})
        st = ans.stats
        return {"id": str(uuid.uuid4()), "model": settings.model_name, "results": results,
                "usage": {"processed_tokens": st["processed_tokens"], "generated_tokens": st["generated_tokens"],
                          "total_tokens": st["processed_tokens"] + st["generated_tokens"]},
                "meta": {"latency_ms": {"queue": 1000 * ans.queue_s, "compute": 1000 * ans.compute_s,
                                        "total": 1000 * (time.monotonic() - t0)},
                         "batch_size": ans.batch_size, "mode": scheduler.mode, "window": settings.window,
                         "stride": settings.stride, "from_cache": st["from_cache"],
                         "encoded_on_the_fly": st["encoded_on_the_fly"]}}

    @app.post("/rerank", response_model=list[TEIResult], response_model_exclude_none=True,
              summary="text-embeddings-inference shaped rerank")
    async def rerank_tei(body: TEIRequest):
        docs, ans = await rank(body.query, body.texts, "texts")
        n = len(ans.order)
        return [{"index": i, "score": (n - r) / n, "text": docs[i][0] if body.return_text else None}
                for r, i in enumerate(ans.order)]

    @app.get("/health", summary="200 once warm-up has compiled every served shape, 503 before")
    async def health():
        if scheduler.failed is not None:
            return JSONResponse({"status": "failed", "error": str(scheduler.failed)}, 503)
        if not scheduler.ready:
            return JSONResponse({"status": "warming_up"}, 503, headers={"Retry-After": "5"})
        return {"status": "ok", "model": settings.model_name, "mode": scheduler.mode,
                "max_batch": settings.max_batch}

    @app.get("/metrics", summary="Prometheus text format")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.state.scheduler = scheduler
    return app
