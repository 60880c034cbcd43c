"""ServeSettings: every knob of a rerank server (decoding defaults, batching, limits), checked once."""
from __future__ import annotations

from dataclasses import dataclass

from perank_jax.core.constants import DECODE_MODES


@dataclass
class ServeSettings:
    window: int | None = 20          # sliding window (None: one window over all documents)
    stride: int = 10
    top_k: int | None = None         # decode only the top k per window
    mode: str | None = None          # None: the checkpoint's default_mode
    passage_bucket: int = 8          # windows padded to a multiple of this many passages (fewer shapes to warm)
    max_batch: int = 8               # requests decoded together (1: batching off)
    max_wait_ms: float = 5.0         # how long the scheduler waits to fill a batch after the first request
    queue_size: int = 64             # requests waiting (beyond it: 503 + Retry-After at once)
    deadline_s: float = 30.0         # a request not answered by then gets 504 and leaves the queue
    max_body_bytes: int = 2_000_000  # larger bodies: 413
    max_documents: int = 200         # more documents: 422 naming `documents`
    max_text_chars: int = 20_000     # a longer document text: 422 naming it
    max_query_tokens: int = 64       # a longer query (in the decoder's tokens): 422 naming `query`
    drain_s: float = 30.0            # SIGTERM: time to finish what is queued before exiting
    model_name: str = "perank"       # echoed in responses

    def __post_init__(self):
        checks = [("window", self.window is None or self.window >= 2, "must be >= 2 (or 0 for one window)"),
                  ("stride", self.stride >= 1, "must be >= 1"),
                  ("stride", self.window is None or self.stride <= self.window, "must be <= window"),
                  ("top_k", self.top_k is None or self.top_k >= 1, "must be >= 1"),
                  ("mode", self.mode is None or self.mode in DECODE_MODES, f"must be one of {DECODE_MODES}"),
                  ("passage_bucket", self.passage_bucket >= 1, "must be >= 1"),
                  ("max_batch", self.max_batch >= 1, "must be >= 1"),
                  ("max_wait_ms", self.max_wait_ms >= 0, "must be >= 0"),
                  ("queue_size", self.queue_size >= 1, "must be >= 1"),
                  ("deadline_s", self.deadline_s > 0, "must be > 0"),
                  ("max_body_bytes", self.max_body_bytes >= 64, "must be >= 64"),
                  ("max_documents", self.max_documents >= 1, "must be >= 1"),
                  ("max_text_chars", self.max_text_chars >= 1, "must be >= 1"),
                  ("max_query_tokens", self.max_query_tokens >= 1, "must be >= 1"),
                  ("drain_s", self.drain_s >= 0, "must be >= 0")]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"serve setting {name}={getattr(self, name)!r}: {why}")
