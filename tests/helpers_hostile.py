"""Tiny valid model files (safetensors, GGUF, config.json, YAML) and the named hostile variants of
issue 24, as bytes: shared by tests/test_hostile_model_files.py and tests/hostile_files_worker.py."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def safetensors_bytes(header, data: bytes = b"", n: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if n is None else n) + h + data


def valid_safetensors() -> bytes:
    from safetensors.numpy import save
    return save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)})


def gguf_bytes(tmp: Path, heads: int = 2, layers: int = 1, extra=None) -> bytes:
    import gguf
    path = tmp / "w.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(heads)
    w.add_head_count_kv(1)
    w.add_context_length(32)
    w.add_vocab_size(10)
    for fn in extra or ():
        fn(w)
    w.add_tensor("token_embd.weight", np.zeros((10, 8), np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


VALID_CONFIG = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                "num_attention_heads": 2, "projector_type": "linear", "embedding_size": 4,
                "query_token": True, "query_scale": 3.0}
VALID_YAML = b"lr: 0.001\nwarmup_steps: 3\nschedule: [1, 2, 3]\n"


def named_cases(tmp: Path) -> list[tuple[str, str, bytes, str]]:
    """(case, loader kind, file bytes, a fragment the one-line refusal must contain)."""
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    gguf_2_62 = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 4) + b"arr!" + struct.pack(
        "<IIQ", 9, 6, 2 ** 62)
    gguf_2_62 += b"\0" * (68 - len(gguf_2_62))
    ok_entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    cfg = lambda **kw: json.dumps({**VALID_CONFIG, **kw}).encode()
    return [
        ("GGUF array claiming 2^62 elements (68 bytes)", "gguf", gguf_2_62, "array of 4611686018427387904"),
        ("GGUF with zero heads", "gguf", gguf_bytes(tmp, heads=0), "num_attention_heads must be in"),
        ("GGUF llama.block_count 10^9", "gguf", gguf_bytes(tmp, layers=10 ** 9), "num_hidden_layers must be in"),
        ("safetensors negative data_offsets", "safetensors",
         safetensors_bytes({"a": {**ok_entry, "data_offsets": [-8, 0]}}, b"\0" * 8), "expected usize"),
        ("safetensors overlapping data_offsets", "safetensors",
         safetensors_bytes({"a": ok_entry, "b": ok_entry}, b"\0" * 8), "invalid offset"),
        ("safetensors float data_offsets", "safetensors",
         safetensors_bytes({"a": {**ok_entry, "data_offsets": [0.0, 8.0]}}, b"\0" * 8), "floating point"),
        ("safetensors header is a list", "safetensors", safetensors_bytes([1, 2]), "invalid type: sequence"),
        ("safetensors entry without dtype", "safetensors",
         safetensors_bytes({"a": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "missing field `dtype`"),
        ("safetensors header nested 100000 deep", "safetensors",
         safetensors_bytes(b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"), "recursion limit"),
        ("safetensors truncated", "safetensors", valid_safetensors()[:-4], "tensor 'b' extends past the end"),
        ("config.json is a list", "config.json", b"[1, 2]", "expected a JSON object"),
        ("config.json not UTF-8", "config.json", b'{"a": "\xff\xfe"}', "not UTF-8"),
        ("config.json num_hidden_layers 10^9", "config.json", cfg(num_hidden_layers=10 ** 9),
         "num_hidden_layers must be in"),
        ("config.json zero heads", "config.json", cfg(num_attention_heads=0), "num_attention_heads must be in"),
        ("config.json string heads", "config.json", cfg(num_attention_heads="2"), "must be an integer"),
        ("config.json rope_theta -1", "config.json", cfg(rope_theta=-1), "rope_theta must be > 0"),
        ("config.json rope_theta NaN", "config.json", cfg(rope_theta=float("nan")), "rope_theta must be > 0"),
        ("config.json negative embedding_size", "config.json", cfg(embedding_size=-4), "embedding_size must be in"),
        ("config.json query_token \"false\"", "config.json", cfg(query_token="false"), "true or false"),
        ("YAML billion laughs (override)", "yaml-override", laughs.encode(), "aliases"),
        ("YAML billion laughs (file)", "yaml-file", laughs.encode(), "aliases"),
        ("YAML python tag (override)", "yaml-override", b"!!python/object/apply:os.system [ls]", "python/object"),
        ("YAML bad syntax (override)", "yaml-override", b"[1, 2", "invalid YAML"),
    ]


