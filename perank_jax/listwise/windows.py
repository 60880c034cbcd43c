"""The sliding-window schedule shared by PE-Rank and the text-listwise baseline.

From the bottom of the first-stage list up (PERANK.md, as in RankGPT / rank_llm):

    start, end = n - window, n
    while end > 0 and start + stride != 0:
        start = max(start, 0)
        rerank candidates[start:end] in place
        start, end = start - stride, end - stride

so top-100 with window 20 / stride 10 is 9 windows and a list whose length is not a
multiple of the stride still gets a last, shorter window at the top. Where the reference
loop misbehaves (n <= window: n=10 is never reranked, n=15 twice) there is one window
over all n.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from perank_jax.core.config import Field

T = TypeVar("T")

# THE rules of the window settings every config and flag that sets them uses (perank tables, perank rerank,
# perank serve): a window of 1 ranks nothing, 0 means one window over all candidates.
WINDOW = Field(int, 20, 2, 1 << 20, also=(0,))
STRIDE = Field(int, 10, 1, 1 << 20)
TOP_K = Field(int, None, 1, 1 << 20)          # decode only the top k of each window (None: all)


def check_windows(window: int | None, stride: int, names: tuple[str, str] = ("window", "stride"),
                  error: type[Exception] = ValueError) -> None:
    """THE rule between the two settings, checked wherever both are set (a flag pair, a tables config,
    the server's settings, sliding_windows): a stride longer than the window leaves passages never
    reranked. window 0 / None (one window over all candidates) takes any stride."""
    if window and stride > window:
        raise error(f"{names[1]} must be <= {names[0]} ({window}), got {stride} (passages between windows "
                    f"would never be reranked)")


def sliding_windows(n: int, window: int = 20, stride: int = 10) -> list[tuple[int, int]]:
    """[(start, end), ...] in processing order (bottom first); each window is items[start:end]."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    check_windows(window, stride)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return []
    if n <= window:
        return [(0, n)]
    out = []
    start, end = n - window, n
    while end > 0 and start + stride != 0:
        start = max(start, 0)
        out.append((start, end))
        start, end = start - stride, end - stride
    return out


def sliding_rerank(items: Sequence[T], rank_window: Callable[[list[T]], Sequence[int]],
                   window: int = 20, stride: int = 10) -> list[T]:
    """Rerank `items` (best first) window by window: `rank_window(sub)` returns a permutation
    of range(len(sub)), best first, and sub is reordered by it in place."""
    items = list(items)
    for start, end in sliding_windows(len(items), window, stride):
        sub = items[start:end]
        perm = [int(p) for p in rank_window(sub)]
        if sorted(perm) != list(range(len(sub))):
            raise ValueError(f"window [{start}, {end}): ranking {perm} is not a permutation of 0..{len(sub) - 1}")
        items[start:end] = [sub[p] for p in perm]
    return items
