"""Compile once: the shape buckets every length is rounded up to before it reaches `jax.jit`
(so compiled functions are reused across queries instead of retraced), and the counter that
tests and benchmarks read to check it."""
from __future__ import annotations

import functools
from typing import Sequence

MIN_BUCKET = 16


def fine_bucket(n: int, min_size: int = 16, fine_after: int = 1024, steps_per_octave: int = 8) -> int:
    """Smallest bucket >= n: powers of two from `min_size` up to `fine_after`, then
    `steps_per_octave` equal steps per doubling (1/8: 1024, 1152, ..., 2048, 2304, ...).
    At most 1/steps_per_octave of a long prompt is padding, and lengths up to 2**k *
    fine_after compile at most k * steps_per_octave long buckets."""
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    if steps_per_octave < 1:
        raise ValueError(f"steps_per_octave must be >= 1, got {steps_per_octave}")
    size = min_size
    while size < n and size < fine_after:
        size *= 2
    if size >= n:
        return size
    octave = fine_after
    while octave * 2 < n:
        octave *= 2
    step = max(1, octave // steps_per_octave)
    return -(-n // step) * step


def length_buckets(max_length: int) -> tuple[int, ...]:
    """Powers of two from 16 and their 1.5x midpoints (16, 24, 32, 48, ..., 256, 384), then
    `max_length`: at most ~2 log2(max_length) compilations, at most a third of a batch padding."""
    b, out = MIN_BUCKET, []
    while b < max_length:
        out += [b] + ([b * 3 // 2] if b * 3 // 2 < max_length else [])
        b *= 2
    return tuple(out) + (max_length,)


def smallest_fitting(length: int, buckets: Sequence[int]) -> int:
    """The smallest of `buckets` that holds `length` (ValueError when none does)."""
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(f"sequence of {length} tokens exceeds the largest length bucket {max(buckets)}")


def round_up(x: int, multiple: int) -> int:
    """x rounded up to a multiple of `multiple` (at least one multiple)."""
    return max(multiple, -(-x // multiple) * multiple)


class TraceCounter:
    """How many times the functions it wraps were traced, i.e. compiled: `jax.jit(c.counted(f))`
    adds one per trace (a Python side effect runs only while jax traces, never when a compiled
    executable is reused)."""

    def __init__(self):
        self.count = 0

    def counted(self, fn):
        @functools.wraps(fn)
        def traced(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)
        return traced
