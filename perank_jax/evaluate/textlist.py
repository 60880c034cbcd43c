"""The text-listwise baseline's pure pieces (RankMistral_p / RankGPT style).

The prompt is the reference's text-only user turn (perank_jax.listwise.prompts.text_prompt, verbatim
from PERANK.md) as chat `messages`; the model answers "[4] > [2] > ...", which
`parse_ranking` turns into a permutation the robust way: keep the digit runs, 1-based ->
0-based, drop duplicates and out-of-range ids, append the missing ids in first-stage order.
Windows follow perank_jax.listwise.windows.sliding_windows, exactly like PE-Rank.
"""
from __future__ import annotations

import re
from typing import Sequence

from perank_jax.listwise.prompts import text_prompt

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


class TextListwiseReranker:
    """The baseline on the JAX decoder: per window, the text prompt in the model's chat
    template, greedy generation in one compiled loop (perank_jax.inference.generate), `parse_ranking`;
    windows by `sliding_windows`, exactly as PE-Rank. `rerank` returns the new order of the
    candidates and a Usage (prompt tokens and generated tokens summed over windows)."""

    def __init__(self, decoder, window: int = 20, stride: int = 10, max_new_tokens: int = 256,
                 max_words: int | None = None):
        from perank_jax.inference.generate import eos_ids_of
        if decoder.tokenizer is None:
            raise ValueError("the text-listwise baseline needs the decoder's tokenizer")
        self.decoder, self.tok = decoder, decoder.tokenizer
        self.window, self.stride = window, stride
        self.max_new_tokens, self.max_words = max_new_tokens, max_words
        self.eos_ids = eos_ids_of(self.tok, decoder.config)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_ids[0]

    @classmethod
    def from_pretrained(cls, path, dtype: str = "float32", **kwargs) -> "TextListwiseReranker":
        from perank_jax.weights.decoder import load_decoder
        return cls(load_decoder(path, dtype=dtype), **kwargs)

    def prompt_ids(self, query: str, texts: Sequence[str]) -> list[int]:
        from perank_jax.listwise.prompts import render_chat
        text = render_chat(self.tok, textlist_messages(query, texts, self.max_words)[0]["content"])
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def rank_window(self, query: str, texts: Sequence[str]) -> tuple[list[int], int, int, str]:
        """(permutation, prompt tokens, generated tokens, answer text) for one window."""
        from perank_jax.inference.generate import greedy_generate
        ids = self.prompt_ids(query, texts)
        out, n = greedy_generate(self.decoder.graphdef, self.decoder.state, [ids], self.max_new_tokens,
                                 self.eos_ids, pad_id=self.pad_id)
        answer = self.tok.decode(out[0, :int(n[0])], skip_special_tokens=True)
        return parse_ranking(answer, len(texts)), len(ids), int(n[0]), answer

    def rerank(self, query: str, texts: Sequence[str]):
        """New order (indices into `texts`, best first) and its accounting Usage."""
        from perank_jax.evaluate.accounting import Usage
        from perank_jax.listwise.windows import sliding_rerank
        usage = Usage()

        def one(sub):
            perm, p, g, _ = self.rank_window(query, [texts[i] for i in sub])
            usage.processed_tokens += p
            usage.generated_tokens += g
            usage.windows += 1
            return perm
        return sliding_rerank(range(len(texts)), one, self.window, self.stride), usage
