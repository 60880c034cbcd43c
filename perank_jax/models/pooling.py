"""Sentence pooling over last hidden states, and the default pooling of a model directory
(its sentence-transformers Pooling config when present)."""
from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp

POOLINGS = ("mean", "cls", "last")


def pool(h, mask, mode: str):
    """h [B,T,D], mask [B,T] bool (right-padded) -> [B,D] float32.

    mean: average of the real tokens (sentence-transformers: sum / clamp(count, 1e-9));
    cls: the first token; last: the last real token."""
    h = h.astype(jnp.float32)
    if mode == "mean":
        m = mask.astype(jnp.float32)[..., None]
        return (h * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    if mode == "cls":
        return h[:, 0]
    if mode == "last":
        last = jnp.maximum(mask.astype(jnp.int32).sum(1) - 1, 0)
        return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    raise ValueError(f"unknown pooling {mode!r}; choose one of {POOLINGS}")


def l2_normalize(x, eps: float = 1e-12):
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def pooling_from_dir(d: Path, hf_config: dict) -> str:
    """Pooling named by the directory: sentence-transformers Pooling module config
    (modules.json -> its path, or 1_Pooling/), else the config's `emb_pooler` (JinaBERT),
    else mean."""
    from perank_jax.models.encoder import EncoderError
    pdir = d / "1_Pooling"
    modules = d / "modules.json"
    if modules.exists():
        try:
            for m in json.loads(modules.read_text()):
                if str(m.get("type", "")).endswith("Pooling"):
                    pdir = d / m.get("path", "1_Pooling")
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            raise EncoderError(f"{modules}: not a valid sentence-transformers modules.json ({e})") from None
    cfg_file = pdir / "config.json"
    if cfg_file.exists():
        try:
            pc = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise EncoderError(f"{cfg_file}: invalid JSON ({e})") from None
        chosen = [name for key, name in (("pooling_mode_mean_tokens", "mean"),
                                         ("pooling_mode_cls_token", "cls"),
                                         ("pooling_mode_lasttoken", "last")) if pc.get(key)]
        other = [k for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                             "pooling_mode_weightedmean_tokens") if pc.get(k)]
        if other or len(chosen) != 1:
            raise EncoderError(f"{cfg_file}: pooling {chosen + other} unsupported; perank-jax supports "
                               f"exactly one of {POOLINGS} (pass pooling= to override)")
        return chosen[0]
    if hf_config.get("emb_pooler") in POOLINGS:
        return hf_config["emb_pooler"]
    return "mean"
