"""Tiny random encoder directories for tests: HF torch BertModel / MPNetModel via save_pretrained,
and a JinaBERT-v2 state dict under jina's own key names (no torch class for it exists here).
Each directory gets the MiniLM tokenizer files (a real BERT WordPiece tokenizer)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def copy_tokenizer(src: Path, dst: Path) -> None:
    for f in TOKENIZER_FILES:
        if (Path(src) / f).exists():
            shutil.copy(Path(src) / f, Path(dst) / f)


def _perturb(model, seed: int):
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_bert(out: Path, tokenizer_src: Path, seed: int = 0, **overrides):
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, max_position_embeddings=128, **{**TINY, **overrides})
    model = _perturb(BertModel(cfg), seed)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    copy_tokenizer(tokenizer_src, out)
    return model


def tiny_mpnet(out: Path, tokenizer_src: Path, seed: int = 0):
    import torch
    from transformers import MPNetConfig, MPNetModel
    torch.manual_seed(seed)
    cfg = MPNetConfig(vocab_size=30527, max_position_embeddings=130, **TINY)
    model = _perturb(MPNetModel(cfg), seed)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    copy_tokenizer(tokenizer_src, out)
    return model


JINA_CONFIG = {
    "architectures": ["JinaBertForMaskedLM"],
    "auto_map": {"AutoConfig": "jinaai/jina-bert-implementation--configuration_bert.JinaBertConfig",
                 "AutoModel": "jinaai/jina-bert-implementation--modeling_bert.JinaBertModel"},
    "model_type": "bert", "position_embedding_type": "alibi", "feed_forward_type": "geglu",
    "emb_pooler": "mean", "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
    "type_vocab_size": 2, "vocab_size": 30528, "max_position_embeddings": 32,
    "attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.1,
}


def jina_state_dict(cfg: dict, seed: int = 0, pooler: bool = True) -> dict[str, np.ndarray]:
    """Random weights under jina-embeddings-v2's HF key names (JinaBertModel)."""
    rng = np.random.default_rng(seed)
    D, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    r = lambda *s, scale=0.1: (scale * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    sd = {"embeddings.word_embeddings.weight": r(V, D, scale=0.5),
          "embeddings.token_type_embeddings.weight": r(cfg["type_vocab_size"], D),
          "embeddings.LayerNorm.weight": 1 + r(D), "embeddings.LayerNorm.bias": r(D)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            sd[p + f"attention.self.{n}.weight"] = r(D, D, scale=0.3)
            sd[p + f"attention.self.{n}.bias"] = r(D)
        sd[p + "attention.output.dense.weight"] = r(D, D, scale=0.3)
        sd[p + "attention.output.dense.bias"] = r(D)
        sd[p + "attention.output.LayerNorm.weight"] = 1 + r(D)
        sd[p + "attention.output.LayerNorm.bias"] = r(D)
        sd[p + "mlp.gated_layers.weight"] = r(2 * I, D, scale=0.3)
        sd[p + "mlp.wo.weight"] = r(D, I, scale=0.3)
        sd[p + "mlp.wo.bias"] = r(D)
        sd[p + "mlp.layernorm.weight"] = 1 + r(D)
        sd[p + "mlp.layernorm.bias"] = r(D)
    if pooler:
        sd["pooler.dense.weight"] = r(D, D)
        sd["pooler.dense.bias"] = r(D)
    return sd


def tiny_jina(out: Path, tokenizer_src: Path, seed: int = 0, num_heads: int = 4, extra=None,
              drop=()) -> tuple[dict, dict]:
    from safetensors.numpy import save_file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**JINA_CONFIG, **TINY, "num_attention_heads": num_heads,
           "hidden_size": 8 * num_heads}
    sd = jina_state_dict(cfg, seed)
    sd.update(extra or {})
    for k in drop:
        sd.pop(k)
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg))
    copy_tokenizer(tokenizer_src, out)
    return cfg, sd
