"""Layer 1, the listwise maths of prompts, windows and query feedback (no JAX models, no files).

    prompts    prompt templates, special tokens, the bounded chat-template render, the static-shape
               placeholder merge and its k-fold expansion
    windows    the sliding-window schedule PE-Rank and the text-listwise baseline share
    feedback   the candidate-aware query vector (dense pseudo-relevance feedback)
"""
from perank_jax.listwise.feedback import FEEDBACK_KEYS, check_feedback, feedback_query
from perank_jax.listwise.prompts import (PLACEHOLDER, RANK, TEMPLATES, PromptError, TokenizedPrompt, add_special_tokens,
                                         build_prompt, content_prompt, render_chat, render_messages, strip_special, text_prompt,
                                         tokenize_prompt, user_prompt)
from perank_jax.listwise.windows import STRIDE, TOP_K, WINDOW, sliding_rerank, sliding_windows

__all__ = [
    "FEEDBACK_KEYS", "check_feedback", "feedback_query",
    "PLACEHOLDER", "RANK", "TEMPLATES", "PromptError", "TokenizedPrompt", "add_special_tokens", "build_prompt",
    "content_prompt", "user_prompt", "render_chat", "render_messages", "strip_special", "text_prompt", "tokenize_prompt",
    "STRIDE", "TOP_K", "WINDOW", "sliding_rerank", "sliding_windows",
]
