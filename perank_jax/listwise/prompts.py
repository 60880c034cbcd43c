"""PE-Rank prompts, tokenizer special tokens and the static-shape placeholder merge.

The user-turn texts are exactly the reference implementation's (see
docs/method.md); they are rendered with the tokenizer's own chat template
(`apply_chat_template(..., add_generation_prompt=True, tokenize=False)`), so
Mistral gets `<s>[INST] ... [/INST]` and SmolLM2 its ChatML. The rendered string
is exactly what is tokenised (with add_special_tokens=False: the template already
holds any BOS).
"""
from __future__ import annotations

import contextlib
import ctypes
import re
import signal
import threading
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

PLACEHOLDER = "<PLACEHOLDER>"
RANK = "<RANK>"


class PromptError(ValueError):
    """A prompt that cannot be built or tokenised as required."""


# --- tokenizer -----------------------------------------------------------------------
def add_special_tokens(tokenizer) -> tuple[int, int]:
    """Add `<PLACEHOLDER>` and `<RANK>` (in that order) as special tokens if missing;
    return (placeholder_id, rank_id). Idempotent."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (PLACEHOLDER, RANK) if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing},
                                     replace_extra_special_tokens=False) \
            if _accepts_replace(tokenizer) else \
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
    ids = tokenizer.convert_tokens_to_ids([PLACEHOLDER, RANK])
    for tok, i in zip((PLACEHOLDER, RANK), ids):
        if i is None or tokenizer.convert_ids_to_tokens(i) != tok:
            raise PromptError(f"tokenizer could not register special token {tok}")
    return int(ids[0]), int(ids[1])


def _accepts_replace(tokenizer) -> bool:
    import inspect
    try:
        return "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters
    except (TypeError, ValueError):
        return False


# --- user-turn texts (verbatim from the reference) ----------------------------------------
def _prefix(query: str, num: int) -> str:
    return (f"I will provide you with {num} passages, each with a special token representing the passage "
            f"enclosed in [], followed by original text.\n"
            f"Rank the passages based on their relevance to the search query: {query}.\n")


def _suffix(query: str, num: int) -> str:
    return (f"Search Query: {query}.\n"
            f"Rank the {num} relatively ordered passages above based on their relevance to the search query, "
            f"output the ranking in descending order. Only output the {num} unique special token in the "
            f"ranking.\n\n")


def replace_bracket_numbers(text: str) -> str:
    """`[12]` -> `(12)` so passage text cannot imitate the ranking syntax."""
    return re.sub(r"\[(\d+)\]", r"(\1)", text)


def embedding_prompt(query: str, num: int) -> str:
    """The inference (embedding-only) user turn for `num` passages."""
    body = "".join(f"Passage {i}: [{PLACEHOLDER}]\n\n" for i in range(1, num + 1))
    return _prefix(query, num) + body + _suffix(query, num)


def content_prompt(query: str, texts: list[str]) -> str:
    """The with-content user turn (stage-2 teacher view): placeholder followed by the text."""
    num = len(texts)
    body = "".join(f"Passage {i}: [{PLACEHOLDER}] {replace_bracket_numbers(t.strip())}\n\n"
                   for i, t in enumerate(texts, 1))
    return _prefix(query, num) + body + _suffix(query, num)


def compact_prompt(query: str, num: int) -> str:
    """A compact embedding-only user turn (one token per passage, no per-passage labels): about
    four times fewer template tokens per window than the paper's, for small models."""
    return (f"Rank the {num} passages by relevance to the search query.\n"
            f"Query: {query}\n"
            f"Passages: " + PLACEHOLDER * num + "\n")


TEMPLATES = {"paper": embedding_prompt, "compact": compact_prompt}


def user_prompt(template: str, query: str, num: int) -> str:
    """The embedding-only user turn of template `paper` (the reference's text) or `compact`."""
    if template not in TEMPLATES:
        raise PromptError(f"unknown prompt template {template!r} (expected one of {sorted(TEMPLATES)})")
    return TEMPLATES[template](query, num)


def assistant_prefix(query_token: bool) -> str:
    """What opens the assistant turn before the ranking: with `query_token`, one more
    placeholder that takes the query's own projected embedding (never a candidate). It is the
    last prompt position, so the state that picks the first passage starts from the query."""
    return PLACEHOLDER if query_token else ""


def build_prompt(tokenizer, query: str, num: int, template: str = "paper", query_token: bool = False) -> str:
    """The full inference prompt for one window: chat-rendered user turn + assistant prefix."""
    return render_chat(tokenizer, user_prompt(template, strip_special(query), num)) + assistant_prefix(query_token)


def text_prompt(query: str, texts: list[str]) -> str:
    """The text-only listwise baseline (RankMistral_p / RankGPT style) user turn."""
    num = len(texts)
    body = "".join(f"Passage {i}: {replace_bracket_numbers(t.strip())}\n\n" for i, t in enumerate(texts, 1))
    return (f"I will provide you with {num} passages.\n"
            f"Rank the passages based on their relevance to the search query: {query}.\n" + body +
            f"Search Query: {query}.\n"
            f"Rank the {num} relatively ordered passages above based on their relevance to the search query, "
            f"output the ranking in descending order. The output format should be [] > [] > ..., e.g., "
            f"[4] > [2] > ..., Only respond with the ranking results with {num} unique numbers, do not say "
            f"anything else or explain.\n\n")


# A chat template is code from the model's files: THE bounds of one render, whoever asks for it.
TEMPLATE_SECONDS = 2.0          # real templates render in milliseconds
TEMPLATE_CHARS = 4 << 20        # a rendered prompt longer than this is refused


class _TemplateTimeout(BaseException):
    """Raised into a render that ran past TEMPLATE_SECONDS (a BaseException, so no `except
    Exception` inside jinja or transformers swallows it)."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise _TemplateTimeout in this thread after `seconds`: SIGALRM in the main thread (interrupts
    pure-Python loops and CPython's long arithmetic), an asynchronous exception in any other thread."""
    if threading.current_thread() is threading.main_thread():
        def on_alarm(signum, frame):
            raise _TemplateTimeout
        old = signal.signal(signal.SIGALRM, on_alarm)
        old_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            if old_timer[0]:                       # someone else's timer: give it back
                signal.setitimer(signal.ITIMER_REAL, *old_timer)
        return
    tid = threading.get_ident()
    timer = threading.Timer(seconds, lambda: ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(tid), ctypes.py_object(_TemplateTimeout)))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def render_messages(tokenizer, messages, **kw) -> str:
    """THE render of a chat template: `tokenizer.apply_chat_template(messages, tokenize=False, **kw)`
    within TEMPLATE_SECONDS and TEMPLATE_CHARS; any failure is one PromptError."""
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError("the tokenizer has no chat_template; PE-Rank prompts need the model's chat format")
    try:
        with _time_limit(TEMPLATE_SECONDS):
            text = tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    except _TemplateTimeout:
        raise PromptError(f"the chat template ran longer than {TEMPLATE_SECONDS:g} s (a loop without bound in "
                          "the model's chat_template?); refused") from None
    except MemoryError:
        raise PromptError("the chat template ran out of memory (a loop without bound in the model's "
                          "chat_template?); refused") from None
    except Exception as e:  # jinja2 TemplateError (e.g. roles that do not alternate), RecursionError, ...
        raise PromptError(f"the chat template cannot render these messages "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
    if not isinstance(text, str) or len(text) > TEMPLATE_CHARS:
        raise PromptError(f"the chat template rendered {len(text) if isinstance(text, str) else type(text).__name__}"
                          f" characters (limit {TEMPLATE_CHARS}); refused")
    return text


def render_chat(tokenizer, user_content: str) -> str:
    """The full prompt string: one user turn in the tokenizer's chat template + generation prompt."""
    return render_messages(tokenizer, [{"role": "user", "content": user_content}], add_generation_prompt=True)


# --- tokenisation ----------------------------------------------------------------------
@dataclass
class TokenizedPrompt:
    ids: np.ndarray            # [T] int32
    placeholder: np.ndarray    # [T] bool, k True entries per slot (passages, then any query slot), in order

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def expand_placeholders(ids: np.ndarray, placeholder_id: int, k: int, *aligned: np.ndarray):
    """Each placeholder token becomes k consecutive ones (a slot of k input vectors); arrays in
    `aligned` ([T], per token) are repeated alike. Returns the new ids (and aligned arrays).
    THE rule of k > 1, for training records and inference prompts alike."""
    reps = np.where(ids == placeholder_id, k, 1) if k != 1 else None
    out = [a if reps is None else np.repeat(a, reps) for a in (ids, *aligned)]
    return out[0] if not aligned else tuple(out)


def tokenize_prompt(tokenizer, text: str, num: int, placeholder_id: int,
                    max_length: int | None = None, per_slot: int = 1) -> TokenizedPrompt:
    """Tokenise a rendered prompt; check it holds exactly `num` placeholders (one per slot), expand
    each to `per_slot` tokens (expand_placeholders) and check the result fits."""
    ids = np.asarray(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=np.int32)
    ph = ids == placeholder_id
    if int(ph.sum()) != num:
        raise PromptError(f"prompt has {int(ph.sum())} {PLACEHOLDER} tokens, expected {num} (does the query or a "
                          f"passage contain the literal text {PLACEHOLDER!r}?)")
    ids = expand_placeholders(ids, placeholder_id, per_slot)
    if max_length is not None and len(ids) > max_length:
        raise PromptError(f"prompt for {num} passages is {len(ids)} tokens, over the limit of {max_length}; "
                          f"use a smaller window or a shorter query")
    return TokenizedPrompt(ids, ids == placeholder_id)


def strip_special(text: str) -> str:
    """Remove literal `<PLACEHOLDER>` / `<RANK>` strings from user text (they would become tokens)."""
    return text.replace(PLACEHOLDER, "").replace(RANK, "")


# --- the placeholder merge (static shapes) ------------------------------------------------
def merge_placeholders(x, placeholder_mask, passages):
    """x [B,T,D] embedded prompt, placeholder_mask [B,T] bool, passages [B,N,D]:
    the c-th placeholder of row b takes passages[b, c]; other positions are unchanged."""
    n = passages.shape[1]
    k = jnp.cumsum(placeholder_mask.astype(jnp.int32), axis=1) - 1            # [B,T]
    k = jnp.clip(k, 0, max(n - 1, 0))
    picked = jnp.take_along_axis(passages, k[:, :, None], axis=1)             # [B,T,D]
    return jnp.where(placeholder_mask[:, :, None], picked.astype(x.dtype), x)

