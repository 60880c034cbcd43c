"""Shape buckets: every length that reaches `jax.jit` is rounded up to one of a few
sizes, so compiled functions are reused across queries instead of retraced."""
from __future__ import annotations


def next_bucket(n: int, min_size: int = 16, linear_after: int = 1024) -> int:
    """Smallest bucket >= n: powers of two from `min_size`, then multiples of `linear_after`."""
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    size = min_size
    while size < n and size < linear_after:
        size *= 2
    if size >= n:
        return size
    return -(-n // linear_after) * linear_after
