"""The values and names the package shares, defined once: the masking value, the decode modes,
the ListMLE weightings and the dtype names that configs and flags accept."""
from __future__ import annotations

import jax.numpy as jnp

# A masked logit / attention score: large, finite and negative. Never -inf (a fully masked row
# would give NaN through softmax); exp(MASKED - anything real) is exactly 0 in float32.
MASKED = -1e9

DECODE_MODES = ("decode", "single_pass")   # full constrained decode (paper) | one step, rank by score
WEIGHTINGS = ("mean", "pow2")              # ListMLE position weighting (stage-2 loss)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
COMPUTE_DTYPES = ("float32", "bfloat16")   # what training and reranking compute in
SHARE_PREFIX = {"all": True, "head": "head", "off": False}   # prefix-sharing policy by name -> PERanker(share_prefix=):
# all: each query's prompt prefix once (or the template head when every query has one window);
# head: only that head, else whole prompts (the server's default); off: whole prompts

ENCODER_MAX_LENGTH = 512                   # encoder tokens per passage unless a model / flag says otherwise (the paper's)
