"""ServeSettings: every knob of a rerank server (decoding defaults, batching, limits), each field's rule
stated once on the field (`perank_jax.core.config.setting`; `perank serve`'s flags take their types from them)."""
from __future__ import annotations

from dataclasses import dataclass

from perank_jax.core.config import ConfigError, setting, settings_rules
from perank_jax.core.constants import DECODE_MODES
from perank_jax.core.sharding import AXIS_RULES
from perank_jax.listwise.windows import STRIDE, TOP_K, WINDOW, check_windows


@dataclass
class ServeSettings:
    window: int | None = WINDOW.setting()       # sliding window (None or 0: one window over all documents)
    stride: int = STRIDE.setting()
    top_k: int | None = TOP_K.setting()         # decode only the top k per window
    mode: str | None = setting(str, None, choices=DECODE_MODES)   # None: the checkpoint's default_mode
    passage_bucket: int = setting(int, 8, 1)    # windows padded to a multiple of this many passages (fewer shapes)
    max_batch: int = setting(int, 8, 1)         # requests decoded together (1: batching off)
    max_wait_ms: float = setting(float, 5.0, 0, lo_open=False)   # wait to fill a batch after the first request
    refill_wait_ms: float = setting(float, 50.0, 0, lo_open=False)   # after a batch is answered, wait up to this
                                                  # long (and at most a tenth of the mean batch time) while fewer
                                                  # requests wait than it answered: its callers come back into one batch
    queue_size: int = setting(int, 64, 1)       # requests waiting (beyond it: 503 + Retry-After at once)
    deadline_s: float = setting(float, 30.0, 0)   # a request not answered by then gets 504 and leaves the queue
    max_body_bytes: int = setting(int, 2_000_000, 64)   # larger bodies: 413
    max_documents: int = setting(int, 200, 1)   # more documents: 422 naming `documents`
    max_text_chars: int = setting(int, 20_000, 1)   # a longer document text: 422 naming it
    max_query_tokens: int = setting(int, 64, 1)   # a longer query (in the decoder's tokens): 422 naming `query`
    drain_s: float = setting(float, 30.0, 0, lo_open=False)   # SIGTERM: time to finish what is queued
    model_name: str = setting(str, "perank")    # echoed in responses
    sharding_rules: list = AXIS_RULES.setting()   # with a mesh: [[logical axis, mesh axis | null], ...] over
                                                  # perank_jax.core.sharding.RULES (as a training config's mesh.rules)

    def __post_init__(self):
        """Every field by its rule (the one checker of configs and flags), then stride <= window."""
        for name, rule in settings_rules(type(self)).items():
            if getattr(self, name) is not None:
                rule.validate(f"serve setting {name}", getattr(self, name))
        if self.window == 0:
            self.window = None
        check_windows(self.window, self.stride, ("window", "serve setting stride"), ConfigError)
