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

from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.atomic import atomic_json
from perank_jax.config import read_config_json
from perank_jax.feedback import feedback_fields
from perank_jax.models import lora as lora_lib
from perank_jax.models.decoder import LoadedDecoder
from perank_jax.models.projector import PREFIXES, Projector
from perank_jax.weights.projector import load_projector
from perank_jax.prompts import add_special_tokens
from perank_jax.weights.decoder import load_decoder, to_hf_tensors
from perank_jax.weights.io import save_safetensors_atomic
from perank_jax.weights.packaged import resolve_model_path

MODEL_TYPES = ("embed_mistral", "mistral", "llama")


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
    """config.json of a PE-Rank checkpoint, with its PE-Rank fields checked."""
    cfg_path = Path(path) / "config.json"
    conf = read_config_json(path, ValueError, FileNotFoundError, expected="a PE-Rank checkpoint directory")
    if conf.get("model_type") not in MODEL_TYPES:
        raise ValueError(f"{cfg_path}: model_type {conf.get('model_type')!r} is not a PE-Rank decoder "
                         f"(expected one of {MODEL_TYPES})")
    conf.setdefault("projector_type", "mlp2x_gelu")
    if "embedding_size" not in conf:
        if conf["projector_type"] != "identity":
            raise ValueError(f"{cfg_path}: field 'embedding_size' (the encoder's dimension) is required")
        conf["embedding_size"] = conf["hidden_size"]
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
    """(LoadedDecoder with the LoRA folded in, Projector) from an adapter directory."""
    from safetensors.numpy import load_file
    path = Path(path)
    base = resolve_model_path(conf.get("base_decoder"))
    if not base:
        raise ValueError(f"{path / 'config.json'}: field 'base_decoder' is required in an adapter checkpoint")
    decoder = load_decoder(base, dtype=dtype, mesh=mesh, unroll=unroll)
    if decoder.config.hidden_size != conf.get("hidden_size", decoder.config.hidden_size):
        raise ValueError(f"{path / 'config.json'}: adapter made for hidden_size {conf['hidden_size']}, "
                         f"base decoder {base} has {decoder.config.hidden_size}")
    f = path / ADAPTER_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f}: adapter weights missing")
    tensors = load_file(str(f))
    rank = int(conf.get("lora_rank") or 0)
    if rank:
        lora = {}
        for name in conf.get("lora_targets") or []:
            try:
                lora[name] = {p: jnp.asarray(tensors[f"lora.{name}.{p}"], jnp.float32) for p in ("a", "b")}
            except KeyError as e:
                raise ValueError(f"{f}: tensor {e.args[0]!r} missing (config.json lists target {name!r})") from None
        state = decoder.state
        params = nnx.to_pure_dict(state)
        merged = lora_lib.merge(params, lora, float(conf.get("lora_alpha", 16.0)), rank)
        nnx.replace_by_pure_dict(state, merged)
        nnx.update(decoder.model, state)
        decoder = LoadedDecoder(decoder.model, decoder.tokenizer, str(path), decoder.tokenizer_error)
    projector = load_projector(path, conf["projector_type"], conf["embedding_size"], decoder.config.hidden_size,
                               dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype), mesh=mesh)
    return decoder, projector
