"""`perank serve`: the HTTP rerank server (perank_jax.serve) behind thin flags."""
from __future__ import annotations

from pathlib import Path

from perank_jax.cli.args import flag_type, mesh_shape, number, sharding_rules
from perank_jax.core.config import settings_rules
from perank_jax.core.constants import COMPUTE_DTYPES, DECODE_MODES, SHARE_PREFIX
from perank_jax.listwise.windows import STRIDE, TOP_K, WINDOW
from perank_jax.serve.settings import ServeSettings


SETTINGS = settings_rules(ServeSettings)     # each flag below that sets a field takes that field's rule


# --- serve (issue 25: an HTTP rerank server) -----------------------------------------------
def add_serve(sub):
    p = sub.add_parser("serve", help="serve reranking over HTTP (/v1/rerank, /rerank, /health, /metrics), "
                                     "batching concurrent requests; needs `pip install 'perank-jax[serve]'`",
                       description="An HTTP rerank server (docs/serving.md). With no arguments: the shipped "
                                   "model on http://127.0.0.1:8000, offline.")
    p.add_argument("--model", default=None, help="PE-Rank checkpoint or adapter directory (default: the shipped one)")
    p.add_argument("--encoder", help="encoder HF directory (default: config.json encoder_name)")
    p.add_argument("--embeddings", metavar="CACHE",
                   help="a `perank encode` cache: documents may then be sent as {\"id\"} alone")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=number(int, 0, 65535), default=8000, help="0: any free port (printed)")
    p.add_argument("--mesh", type=mesh_shape, default=None, metavar="data=N")
    p.add_argument("--sharding-rules", type=sharding_rules, default=SETTINGS["sharding_rules"].default,
                   metavar="RULES", help="with --mesh: [[logical axis, mesh axis | null], ...] overriding the "
                                         "default sharding rules (YAML text or a file)")
    p.add_argument("--dtype", default="float32", choices=COMPUTE_DTYPES)
    p.add_argument("--mode", choices=DECODE_MODES, default=None, help="default: the checkpoint's `default_mode`")
    p.add_argument("--window", type=flag_type(WINDOW), default=WINDOW.default,
                   help="sliding window; 0 = one window (default %(default)s)")
    p.add_argument("--stride", type=flag_type(STRIDE), default=STRIDE.default)
    p.add_argument("--top-k", type=flag_type(TOP_K), default=None, help="decode only the top k per window")
    p.add_argument("--share-prefix", choices=SHARE_PREFIX, default="head",
                   help="head: a batch of one-window requests of one size prefills the prompt's template head "
                        "once (every shape warmed); all: also each query's prefix over its windows (shapes may "
                        "compile on first use); off: whole prompts (default %(default)s)")
    b = p.add_argument_group("batching and limits")
    for flag, name, more in (
            ("--max-batch", "max_batch", dict(help="requests decoded together (1: batching off)")),
            ("--passage-bucket", "passage_bucket", dict(help="windows padded to a multiple of this many passages: "
                                                             "fewer compiled shapes (default %(default)s)")),
            ("--max-wait-ms", "max_wait_ms", dict(help="wait this long after a first request for others to join "
                                                       "its batch (default %(default)s)")),
            ("--refill-wait-ms", "refill_wait_ms", dict(help="after a batch is answered, wait up to this long "
                                                             "(at most a tenth of the mean batch time) for its "
                                                             "callers' next requests to join one batch; 0: off "
                                                             "(default %(default)s)")),
            ("--queue-size", "queue_size", dict(help="waiting requests; beyond: 503 (default %(default)s)")),
            ("--deadline", "deadline_s", dict(metavar="SECONDS", help="a request not answered in time gets 504 "
                                                                      "(default %(default)s)")),
            ("--max-body-bytes", "max_body_bytes", {}), ("--max-documents", "max_documents", {}),
            ("--max-text-chars", "max_text_chars", {}), ("--max-query-tokens", "max_query_tokens", {}),
            ("--drain", "drain_s", dict(metavar="SECONDS", help="on SIGTERM: time to finish queued requests "
                                                                "(default %(default)s)"))):
        b.add_argument(flag, type=flag_type(SETTINGS[name]), default=SETTINGS[name].default, **more)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    def run(a):
        from perank_jax.serve.server import run_server
        settings = ServeSettings(
            window=a.window or None, stride=a.stride, top_k=a.top_k, mode=a.mode, max_batch=a.max_batch,
            passage_bucket=a.passage_bucket, max_wait_ms=a.max_wait_ms, refill_wait_ms=a.refill_wait_ms,
            queue_size=a.queue_size, deadline_s=a.deadline,
            max_body_bytes=a.max_body_bytes, max_documents=a.max_documents, max_text_chars=a.max_text_chars,
            max_query_tokens=a.max_query_tokens, drain_s=a.drain, sharding_rules=a.sharding_rules,
            model_name=Path(a.model).name if a.model else "perank-shipped")
        run_server(settings, model=a.model, encoder=a.encoder, embeddings=a.embeddings, host=a.host, port=a.port,
                   mesh=a.mesh, dtype=a.dtype, share_prefix=SHARE_PREFIX[a.share_prefix], log_level=a.log_level)
    p.set_defaults(func=run)


