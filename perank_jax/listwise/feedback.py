"""Candidate-aware query vector: dense pseudo-relevance feedback for the query token and for cosine.

    q' = normalize(q + weight * sum_i softmax_i(cos(q, e_i) / temperature) * e_i)

over the encoder vectors e_i of ALL candidates of a request (the first stage's list, before any
window), computed once per query in the encoder's space. A small temperature makes it a soft
"mean of the few candidates closest to the query" (Rocchio-style feedback); weight 0 is off.
PE-Rank checkpoints with a query token feed q' instead of q into the query's slot
(config.json `query_feedback_weight` / `query_feedback_temperature`); the evaluation's
embedding method uses the same function, so "cosine + feedback" is the encoder-only peer.
"""
from __future__ import annotations

import numpy as np

from perank_jax.core.config import ConfigError, Field

FEEDBACK_KEYS = ("query_feedback_weight", "query_feedback_temperature")
# THE ranges of the two settings, for every place that takes them: PERankConfig's two fields, a training
# config's and a tables method's `query_feedback: [weight, temperature]` (QUERY_FEEDBACK), --query-feedback.
FEEDBACK_WEIGHT = Field(float, 0.0, 0.0, 1e6, lo_open=False)        # 0: off
FEEDBACK_TEMPERATURE = Field(float, 0.01, 0.0, 1e6, lo_open=True)


def check_feedback(weight: float, temperature: float, label: str = "query feedback") -> tuple[float, float]:
    """(weight, temperature) checked by their rules, or one ConfigError (a ValueError) naming the bad one:
    "LABEL weight must be >= 0 and <= 1e+06, got -1.0"."""
    return (float(FEEDBACK_WEIGHT.validate(f"{label} weight", weight)),
            float(FEEDBACK_TEMPERATURE.validate(f"{label} temperature", temperature)))


def check_feedback_pair(label: str, value) -> list[float]:
    """A config's `query_feedback: [weight, temperature]`: two numbers, each by its rule ("LABEL[1] must be ...")."""
    if len(value) != 2:
        raise ConfigError(f"{label} must be [weight, temperature], got {list(value)!r}")
    return [float(FEEDBACK_WEIGHT.validate(f"{label}[0]", value[0])),
            float(FEEDBACK_TEMPERATURE.validate(f"{label}[1]", value[1]))]


QUERY_FEEDBACK = Field(list, [0.0, 0.01], shape=check_feedback_pair)


def feedback_fields(weight: float, temperature: float) -> dict:
    """The config.json keys of a setting: both keys when it is on, none when weight is 0 (off is the default)."""
    return dict(zip(FEEDBACK_KEYS, (float(weight), float(temperature)))) if weight > 0 else {}


def feedback_query(q: np.ndarray, e: np.ndarray, weight: float, temperature: float) -> np.ndarray:
    """q' for one query: q [E], candidates e [n, E] (any norms; cosines are used). Returns a unit
    float32 vector; with weight 0 or no candidates, q normalised."""
    q = np.asarray(q, np.float64)
    q = q / max(np.linalg.norm(q), 1e-12)
    if weight == 0 or len(e) == 0:
        return q.astype(np.float32)
    e = np.asarray(e, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    s = e @ q / temperature
    w = np.exp(s - s.max())
    out = q + weight * (w / w.sum()) @ e
    return (out / max(np.linalg.norm(out), 1e-12)).astype(np.float32)
