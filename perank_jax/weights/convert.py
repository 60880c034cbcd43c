"""`perank convert`: a Llama-family GGUF file -> an HF safetensors directory, written only after the
GGUF's header, metadata (as a decoder config) and every tensor's shape have been checked; and
`write_hf_dir`, the one writer of an HF decoder directory (also used by tools/make_toy_set.py)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from perank_jax.core.atomic import fresh_temp, replace_dir
from perank_jax.weights.decoder import expected_hf_shapes
from perank_jax.weights.gguf import GGUFSource
from perank_jax.weights.io import check_keymap, save_safetensors_atomic


def gguf_to_hf_dir(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write an HF directory (config.json, float32 model.safetensors, tokenizer) from a GGUF file.

    Written into a temporary sibling and renamed, so `out_dir` is complete or absent; an existing
    `out_dir` is replaced only if it holds nothing but an earlier conversion's files."""
    src = GGUFSource(gguf_path)
    cfg = src.config
    check_keymap(str(gguf_path), {k: src.shape(k) for k in src.keys()}, expected_hf_shapes(cfg),
                 optional={"lm_head.weight"} if cfg.tie_word_embeddings else ())
    return write_hf_dir(out_dir, src.hf_config(), {k: src.get(k) for k in src.keys()}, src.tokenizer(),
                        metadata={"format": "pt", "source": Path(gguf_path).name})


def write_hf_dir(out_dir: str | os.PathLike, hf_config: dict, tensors: dict, tokenizer,
                 metadata: dict | None = None) -> Path:
    """Write an HF decoder directory (config.json, model.safetensors, tokenizer files) into a temporary
    sibling and rename it, so `out_dir` is complete or absent; an existing `out_dir` is replaced only
    if it holds nothing but an earlier write's files."""
    out = Path(out_dir)
    tmp = fresh_temp(out, directory=True)
    try:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        save_safetensors_atomic(tensors, tmp / "model.safetensors", metadata=metadata or {"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        replace_dir(tmp, out, ours=[p.name for p in tmp.iterdir()])
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
