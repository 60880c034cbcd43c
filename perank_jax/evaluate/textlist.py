"""The text-listwise baseline's pure pieces (RankMistral_p / RankGPT style).

The prompt is the reference's text-only user turn (perank_jax.prompts.text_prompt, verbatim
from PERANK.md) as chat `messages`; the model answers "[4] > [2] > ...", which
`parse_ranking` turns into a permutation the robust way: keep the digit runs, 1-based ->
0-based, drop duplicates and out-of-range ids, append the missing ids in first-stage order.
Windows follow perank_jax.windows.sliding_windows, exactly like PE-Rank.
"""
from __future__ import annotations

import re
from typing import Sequence

from perank_jax.prompts import text_prompt

_DIGITS = re.compile(r"\d+")


def truncate_words(text: str, max_words: int | None) -> str:
    """The first `max_words` whitespace-separated words (None: unchanged, as the reference)."""
    if max_words is None:
        return text
    return " ".join(text.split()[:max_words])


def textlist_messages(query: str, texts: Sequence[str], max_words: int | None = None) -> list[dict]:
    """One user turn ranking `texts` (in first-stage order) for `query`."""
    if not texts:
        raise ValueError("a listwise prompt needs at least one passage")
    return [{"role": "user", "content": text_prompt(query, [truncate_words(t, max_words) for t in texts])}]


def parse_ranking(answer: str, n: int) -> list[int]:
    """A generated answer -> a permutation of range(n), best first."""
    seen, out = set(), []
    for run in _DIGITS.findall(answer):
        i = int(run) - 1
        if 0 <= i < n and i not in seen:
            seen.add(i)
            out.append(i)
    return out + [i for i in range(n) if i not in seen]
