"""PE-Rank checkpoints on disk: full checkpoint directories and small adapters, read and written.

Full checkpoint (as released by the paper's authors, and as `save_checkpoint` writes it):
config.json with model_type `mistral` / `llama` (the released ones say `embed_mistral`) plus `projector_type`,
`embedding_size`, `encoder_name`, `encoder_pooling` and this project's prompt fields; HF decoder
weights and the projector under `model.projector.*` in the safetensors files; the tokenizer
(with `<PLACEHOLDER>` / `<RANK>`). transformers loads the decoder part as a causal LM.

Adapter (`perank_format: adapter`, what LoRA training ships): adapter.safetensors with the
projector (torch layout) and LoRA factors `lora.<target>.a` [L, in, r] / `.b` [L, r, out], and
config.json naming the base decoder and encoder (paths or `packaged:` names).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.atomic import atomic_json
from perank_jax.config import check_number, read_config_json
from perank_jax.constants import DECODE_MODES
from perank_jax.feedback import FEEDBACK_KEYS, check_feedback, feedback_fields
from perank_jax.models import lora as lora_lib
from perank_jax.models.decoder import LoadedDecoder
from perank_jax.models.pooling import POOLINGS
from perank_jax.models.projector import PREFIXES, Projector, num_linears
from perank_jax.weights.projector import load_projector
from perank_jax.prompts import TEMPLATES, add_special_tokens
from perank_jax.weights.decoder import load_decoder, to_hf_tensors
from perank_jax.weights.io import SafetensorsFile, save_safetensors_atomic
from perank_jax.weights.packaged import resolve_model_path

MODEL_TYPES = ("embed_mistral", "mistral", "llama")


@dataclass(frozen=True)
class Field:
    """One PE-Rank config.json field: its type, default (None: optional, null allowed) and allowed values.
    A number is finite and in [lo, hi] (floats: lo excluded); rules other modules own (projector kinds,
    feedback pairs) are checked by calling them in `check_perank_config`."""
    kind: type                       # bool, int, float, str, or list (of str)
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()              # str / list items: the allowed values (empty: any)

    def check(self, name: str, value, where: str):
        if value is None:
            return self.default
        bad = f"{where}: field {name!r} must be "
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(bad + f"true or false (a JSON bool), got {value!r}")
            return value
        if self.kind in (int, float):
            lo = -math.inf if self.lo is None else self.lo
            hi = sys.float_info.max if self.hi is None else self.hi      # floats: finite always
            try:
                return check_number(repr(name), value, self.kind, lo, hi, ValueError)
            except ValueError as e:
                raise ValueError(f"{where}: field {e}") from None
        items = value if self.kind is list else [value]
        if self.kind is list and not isinstance(value, list):
            raise ValueError(bad + f"a list, got {value!r}")
        for v in items:
            if not isinstance(v, str) or self.choices and v not in self.choices:
                what = f"one of {list(self.choices)}" if self.choices else "a string"
                raise ValueError(bad + (f"a list of {what}" if self.kind is list else what) + f", got {value!r}")
        return list(value) if self.kind is list else value


# THE PE-Rank fields of config.json (the HF decoder fields are models.decoder.FIELD_LIMITS'), read by
# load_checkpoint and by PERanker for any config it is given; a later PERankConfig extends this table.
PERANK_FIELDS = {
    "perank_format": Field(str, None, choices=("adapter",)),
    "projector_type": Field(str, "mlp2x_gelu"),                   # kinds: models.projector.num_linears
    "embedding_size": Field(int, None, 1, 1 << 17),
    "hidden_size": Field(int, None, 1, 1 << 17),
    "base_decoder": Field(str, None),
    "encoder_name": Field(str, ""),
    "encoder_pooling": Field(str, None, choices=POOLINGS),
    "encoder_max_length": Field(int, 512, 2, 1 << 20),
    "prompt_template": Field(str, "paper", choices=tuple(TEMPLATES)),
    "default_mode": Field(str, "decode", choices=DECODE_MODES),
    "query_token": Field(bool, False),
    "query_scale": Field(float, 1.0, 0.0, 1e6),
    FEEDBACK_KEYS[0]: Field(float, 0.0),                           # ranges: feedback.check_feedback
    FEEDBACK_KEYS[1]: Field(float, 0.01),
    "lora_rank": Field(int, 0, 0, 4096),
    "lora_alpha": Field(float, 16.0, 0.0, 1e6),
    "lora_targets": Field(list, [], choices=tuple(lora_lib.IN_DIMS)),
}


def check_perank_config(conf: dict, where: str = "config") -> dict:
    """`conf` with every PE-Rank field checked against PERANK_FIELDS and defaults filled in; one
    ValueError naming `where` and the field otherwise. Other keys (the HF decoder's) pass unchanged."""
    out = dict(conf)
    for name, field in PERANK_FIELDS.items():
        out[name] = field.check(name, conf.get(name), where)
    try:
        num_linears(out["projector_type"])
        check_feedback(out[FEEDBACK_KEYS[0]], out[FEEDBACK_KEYS[1]])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if out["lora_rank"] == 0 and out["lora_targets"] and out["perank_format"] == "adapter":
        raise ValueError(f"{where}: lora_rank is 0 but lora_targets lists {out['lora_targets']}")
    return out


def load_checkpoint(path, dtype: str = "float32", mesh=None, allow_pickle: bool = False, unroll: bool = False):
    """(config dict, LoadedDecoder, Projector) from a full PE-Rank checkpoint or an adapter directory.
    unroll: the decoder's layer scan unrolled (see perank_jax.models.decoder.Decoder)."""
    path = Path(path)
    conf = read_perank_config(path)
    if conf.get("perank_format") == "adapter":
        decoder, projector = load_adapter(path, conf, dtype=dtype, mesh=mesh, unroll=unroll)
    else:
        skip = PREFIXES + ("model.encoder.", "encoder.")
        decoder = load_decoder(path, dtype=dtype, mesh=mesh, ignore=lambda k: k.startswith(skip), unroll=unroll)
        projector = load_projector(path, conf["projector_type"], conf["embedding_size"],
                                   decoder.config.hidden_size, dtype=jnp.dtype(dtype),
                                   param_dtype=jnp.dtype(dtype), allow_pickle=allow_pickle, mesh=mesh)
    return conf, decoder, projector


def encoder_settings(conf: dict) -> dict:
    """How a PE-Rank checkpoint (its config.json `conf`) encodes passages: the ONE source of the
    encoder settings that `PERanker.from_pretrained` loads, `perank encode --model` writes a cache
    with and the cache check (perank_jax.passage_vectors) compares: pooling (None: the encoder's
    sentence-transformers config), L2 normalisation, max_length and the weight dtype."""
    return {"pooling": conf.get("encoder_pooling") or None, "normalize": True,
            "max_length": int(conf.get("encoder_max_length") or 512), "dtype": "float32"}


def load_checkpoint_encoder(path, conf: dict | None = None, encoder_path=None, max_length: int | None = None):
    """The DenseEncoder a PE-Rank checkpoint reranks with: `encoder_path` (a directory or `packaged:`
    name), else config.json's `encoder_name`, loaded with `encoder_settings(conf)` (`max_length`
    overrides its max_length); refused when it is not local or its dimension is not the projector's."""
    from perank_jax.weights.encoder import load_encoder
    conf = read_perank_config(path) if conf is None else conf
    src = resolve_model_path(encoder_path or conf.get("encoder_name"))
    if not src or not Path(src).exists():
        raise FileNotFoundError(f"{path}: encoder {src!r} (config.json encoder_name) is not a local "
                                "directory; pass encoder_path= (--encoder) pointing to the encoder's HF directory")
    kw = encoder_settings(conf)
    if max_length:
        kw["max_length"] = int(max_length)
    encoder = load_encoder(src, **kw)
    if encoder.dim != conf["embedding_size"]:
        raise ValueError(f"encoder {src} gives {encoder.dim}-d embeddings but the checkpoint's projector expects "
                         f"embedding_size={conf['embedding_size']}")
    return encoder


def read_perank_config(path) -> dict:
    """config.json of a PE-Rank checkpoint, with its PE-Rank fields checked (PERANK_FIELDS)."""
    cfg_path = Path(path) / "config.json"
    conf = read_config_json(path, ValueError, FileNotFoundError, expected="a PE-Rank checkpoint directory")
    if conf.get("model_type") not in MODEL_TYPES:
        raise ValueError(f"{cfg_path}: model_type {conf.get('model_type')!r} is not a PE-Rank decoder "
                         f"(expected one of {MODEL_TYPES})")
    conf = check_perank_config(conf, str(cfg_path))
    if conf["embedding_size"] is None:
        if conf["projector_type"] != "identity":
            raise ValueError(f"{cfg_path}: field 'embedding_size' (the encoder's dimension) is required")
        conf["embedding_size"] = conf["hidden_size"]
    if conf["perank_format"] == "adapter" and not conf["base_decoder"]:
        raise ValueError(f"{cfg_path}: field 'base_decoder' is required in an adapter checkpoint")
    return conf


def save_checkpoint(out_dir, decoder_model, projector: Projector, tokenizer, *, encoder_name: str = "",
                    encoder_pooling: str = "mean", encoder_max_length: int = 512, model_type: str | None = None,
                    prompt_template: str = "paper", query_token: bool = False, query_scale: float = 1.0,
                    default_mode: str = "decode", query_feedback: tuple[float, float] = (0.0, 0.01)) -> Path:
    """Write a PE-Rank checkpoint directory readable by PERanker.from_pretrained (and, for the
    decoder part, by transformers): config.json, model.safetensors (decoder + model.projector.*),
    tokenizer files. Each file is written atomically. model_type defaults to the decoder's own
    HF type (`mistral` / `llama`), so `AutoModelForCausalLM.from_pretrained` loads the decoder
    part; pass `embed_mistral` only to imitate the released checkpoints' label (which
    transformers does not know; it is read here either way)."""
    model_type = model_type or decoder_model.cfg.model_type
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    add_special_tokens(tokenizer)
    tensors = to_hf_tensors(decoder_model)
    tensors.update(projector.export_torch("model.projector."))
    save_safetensors_atomic(tensors, out / "model.safetensors", metadata={"format": "pt"})
    conf = decoder_model.cfg.to_hf()
    conf.update(model_type=model_type, projector_type=projector.kind, embedding_size=projector.in_dim,
                encoder_name=str(encoder_name), encoder_pooling=encoder_pooling,
                encoder_max_length=int(encoder_max_length), torch_dtype="float32",
                prompt_template=prompt_template, query_token=bool(query_token), query_scale=float(query_scale),
                default_mode=default_mode, **feedback_fields(*query_feedback))
    atomic_json(out / "config.json", conf)
    tokenizer.save_pretrained(out)
    return out


ADAPTER_FILE = "adapter.safetensors"


def save_adapter(out_dir, projector: Projector, lora: dict | None, *, base_decoder: str, encoder_name: str,
                 lora_rank: int = 0, lora_alpha: float = 16.0, encoder_pooling: str = "mean",
                 encoder_max_length: int = 512, prompt_template: str = "paper", query_token: bool = False,
                 hidden_size: int, model_type: str = "llama", dtype: str = "float32",
                 extra: dict | None = None) -> Path:
    """Write a small PE-Rank adapter directory: adapter.safetensors (projector in torch layout
    under `model.projector.`, LoRA factors `lora.<target>.a` [L, in, r] / `.b` [L, r, out]) and
    config.json naming the base decoder and encoder (paths or `packaged:` names)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(jnp.dtype(dtype))
    tensors = {k: np.asarray(v, np.float32).astype(np_dtype) for k, v in projector.export_torch("model.projector.").items()}
    for name, ab in (lora or {}).items():
        for part in ("a", "b"):
            tensors[f"lora.{name}.{part}"] = np.asarray(ab[part], np.float32).astype(np_dtype)
    save_safetensors_atomic(tensors, out / ADAPTER_FILE, metadata={"format": "pt"})
    conf = {"perank_format": "adapter", "model_type": model_type, "base_decoder": str(base_decoder),
            "hidden_size": int(hidden_size), "projector_type": projector.kind, "embedding_size": projector.in_dim,
            "encoder_name": str(encoder_name), "encoder_pooling": encoder_pooling,
            "encoder_max_length": int(encoder_max_length), "prompt_template": prompt_template,
            "query_token": bool(query_token), "lora_rank": int(lora_rank if lora else 0),
            "lora_alpha": float(lora_alpha), "lora_targets": sorted(lora or {}), **(extra or {})}
    atomic_json(out / "config.json", conf)
    return out


def load_adapter(path, conf: dict, dtype: str = "float32", mesh=None, unroll: bool = False):
    """(LoadedDecoder with the LoRA folded in, Projector) from an adapter directory (`conf`: its
    checked config, read_perank_config). Every LoRA factor is checked before the merge: present,
    the shape the base decoder and lora_rank imply, finite; each problem names the tensor."""
    path = Path(path)
    base = resolve_model_path(conf["base_decoder"])
    decoder = load_decoder(base, dtype=dtype, mesh=mesh, unroll=unroll)
    if decoder.config.hidden_size != (conf.get("hidden_size") or decoder.config.hidden_size):
        raise ValueError(f"{path / 'config.json'}: adapter made for hidden_size {conf['hidden_size']}, "
                         f"base decoder {base} has {decoder.config.hidden_size}")
    f = path / ADAPTER_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f}: adapter weights missing")
    tensors = SafetensorsFile(f)
    rank, targets = conf["lora_rank"], conf["lora_targets"]
    stray = sorted(k for k in tensors.keys() if k.startswith("lora.") and k.split(".")[1] not in targets)
    if stray:
        raise ValueError(f"{f}: tensor {stray[0]!r} is not one of config.json's lora_targets {targets}")
    if rank:
        state = decoder.state
        params = nnx.to_pure_dict(state)
        lora = {}
        for name in targets:
            shapes = lora_lib.factor_shapes(params[name].shape, name, rank)
            lora[name] = {}
            for part, want in zip(("a", "b"), shapes):
                key = f"lora.{name}.{part}"
                if key not in tensors.keys():
                    raise ValueError(f"{f}: tensor {key!r} missing (config.json lists target {name!r})")
                if tensors.shape(key) != want:
                    raise ValueError(f"{f}: tensor {key!r} has shape {tensors.shape(key)}, expected {want} "
                                     f"(lora_rank {rank} in config.json, base decoder {base})")
                lora[name][part] = jnp.asarray(tensors.finite(key))
        merged = lora_lib.merge(params, lora, conf["lora_alpha"], rank)
        nnx.replace_by_pure_dict(state, merged)
        nnx.update(decoder.model, state)
        decoder = LoadedDecoder(decoder.model, decoder.tokenizer, str(path), decoder.tokenizer_error)
    projector = load_projector(path, conf["projector_type"], conf["embedding_size"], decoder.config.hidden_size,
                               dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype), mesh=mesh)
    return decoder, projector
