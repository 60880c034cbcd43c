"""PE-Rank checkpoints on disk: full checkpoint directories and small adapters, read and written.

Full checkpoint (as released by the paper's authors, and as `save_checkpoint` writes it):
config.json (perank_jax.weights.perank_config.PERankConfig: model_type `mistral` / `llama`, the released
ones say `embed_mistral`, the projector, `embedding_size`, the encoder and prompt fields); HF decoder
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

from perank_jax.models import lora as lora_lib
from perank_jax.models.decoder import LoadedDecoder
from perank_jax.models.projector import PREFIXES, Projector, options_dict
from perank_jax.listwise.prompts import add_special_tokens
from perank_jax.weights.perank_config import PERankConfig
from perank_jax.weights.projector import load_projector
from perank_jax.weights.decoder import load_decoder, to_hf_tensors
from perank_jax.weights.io import SafetensorsFile, save_safetensors_atomic
from perank_jax.weights.packaged import resolve_model_path

def load_checkpoint(path, dtype: str = "float32", mesh=None, allow_pickle: bool = False, unroll: bool = False):
    """(PERankConfig, LoadedDecoder, Projector) from a full PE-Rank checkpoint or an adapter directory.
    unroll: the decoder's layer scan unrolled (see perank_jax.models.decoder.Decoder)."""
    path = Path(path)
    conf = PERankConfig.read(path)
    if conf.perank_format == "adapter":
        decoder, projector = load_adapter(path, conf, dtype=dtype, mesh=mesh, unroll=unroll)
    else:
        skip = PREFIXES + ("model.encoder.", "encoder.")
        decoder = load_decoder(path, dtype=dtype, mesh=mesh, ignore=lambda k: k.startswith(skip), unroll=unroll)
        projector = load_projector(path, conf.projector, conf.embedding_size, decoder.config.hidden_size,
                                   options=conf.projector_options, dtype=jnp.dtype(dtype),
                                   param_dtype=jnp.dtype(dtype), allow_pickle=allow_pickle, mesh=mesh)
    return conf, decoder, projector


def load_checkpoint_encoder(path, conf: PERankConfig | None = None, encoder_path=None,
                            max_length: int | None = None):
    """The DenseEncoder a PE-Rank checkpoint reranks with: `encoder_path` (a directory or `packaged:`
    name), else config.json's `encoder_name`, loaded with `conf.encoder_settings()` (`max_length`
    overrides its max_length); refused when it is not local or its dimension is not the projector's."""
    from perank_jax.weights.encoder import load_encoder
    conf = PERankConfig.read(path) if conf is None else conf
    src = resolve_model_path(encoder_path or conf.encoder_name)
    if not src or not Path(src).exists():
        raise FileNotFoundError(f"{path}: encoder {src!r} (config.json encoder_name) is not a local "
                                "directory; pass encoder_path= (--encoder) pointing to the encoder's HF directory")
    if max_length:
        conf = conf.replace("encoder max length (--encoder-max-length)", encoder_max_length=max_length)
    encoder = load_encoder(src, **conf.encoder_settings())
    if encoder.dim != conf.embedding_size:
        raise ValueError(f"encoder {src} gives {encoder.dim}-d embeddings but the checkpoint's projector expects "
                         f"embedding_size={conf.embedding_size}")
    return encoder


def save_checkpoint(out_dir, decoder_model, projector: Projector, tokenizer, config: PERankConfig | None = None,
                    **changes) -> Path:
    """Write a PE-Rank checkpoint directory readable by PERanker.from_pretrained (and, for the
    decoder part, by transformers): config.json (`config` with `changes`, the projector's kind and
    options and the decoder's HF fields), model.safetensors (decoder + model.projector.*), tokenizer
    files. Each file is written atomically. model_type defaults to the decoder's own HF type
    (`mistral` / `llama`), so `AutoModelForCausalLM.from_pretrained` loads the decoder part; pass
    `embed_mistral` only to imitate the released checkpoints' label (read here either way)."""
    base = config or PERankConfig()
    hf = {**decoder_model.cfg.to_hf(), "torch_dtype": "float32"}
    conf = PERankConfig.from_dict({
        **base.fields(), "perank_format": None, "base_decoder": None, "lora_rank": 0, "lora_targets": [],
        "encoder_pooling": base.encoder_pooling or "mean", **changes,
        "model_type": changes.get("model_type") or decoder_model.cfg.model_type, **projector_fields(projector), "hf": hf}, "save_checkpoint")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    add_special_tokens(tokenizer)
    tensors = to_hf_tensors(decoder_model)
    tensors.update(projector.export_torch("model.projector."))
    save_safetensors_atomic(tensors, out / "model.safetensors", metadata={"format": "pt"})
    conf.write(out)
    tokenizer.save_pretrained(out)
    return out


def projector_fields(projector: Projector) -> dict:
    """The PERankConfig fields a built projector determines: its kind, options and dimensions."""
    return {"projector": projector.kind, "projector_options": options_dict(projector.options),
            "embedding_size": projector.in_dim, "hidden_size": projector.out_dim}


ADAPTER_FILE = "adapter.safetensors"


def save_adapter(out_dir, projector: Projector, lora: dict | None, config: PERankConfig | None = None, *,
                 dtype: str = "float32", **changes) -> Path:
    """Write a small PE-Rank adapter directory: adapter.safetensors (projector in torch layout
    under `model.projector.`, LoRA factors `lora.<target>.a` [L, in, r] / `.b` [L, r, out]) and
    config.json (`config` with `changes`: base_decoder, encoder_name, ...; the projector's fields
    and the LoRA targets from the arguments)."""
    base = config or PERankConfig()
    conf = PERankConfig.from_dict({
        **base.fields(), "perank_format": "adapter", "model_type": base.model_type or "llama",
        "encoder_pooling": base.encoder_pooling or "mean", **changes, **projector_fields(projector),
        "lora_targets": sorted(lora or {}), **({} if lora else {"lora_rank": 0})}, "save_adapter")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(jnp.dtype(dtype))
    tensors = {k: np.asarray(v, np.float32).astype(np_dtype) for k, v in projector.export_torch("model.projector.").items()}
    for name, ab in (lora or {}).items():
        for part in ("a", "b"):
            tensors[f"lora.{name}.{part}"] = np.asarray(ab[part], np.float32).astype(np_dtype)
    save_safetensors_atomic(tensors, out / ADAPTER_FILE, metadata={"format": "pt"})
    conf.write(out)
    return out


def load_adapter(path, conf: dict, dtype: str = "float32", mesh=None, unroll: bool = False):
    """(LoadedDecoder with the LoRA folded in, Projector) from an adapter directory (`conf`: its
    checked config, read_perank_config). Every LoRA factor is checked before the merge: present,
    the shape the base decoder and lora_rank imply, finite; each problem names the tensor."""
    path = Path(path)
    base = resolve_model_path(conf.base_decoder)
    decoder = load_decoder(base, dtype=dtype, mesh=mesh, unroll=unroll)
    if decoder.config.hidden_size != (conf.hidden_size or decoder.config.hidden_size):
        raise ValueError(f"{path / 'config.json'}: adapter made for hidden_size {conf.hidden_size}, "
                         f"base decoder {base} has {decoder.config.hidden_size}")
    f = path / ADAPTER_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f}: adapter weights missing")
    tensors = SafetensorsFile(f)
    rank, targets = conf.lora_rank, conf.lora_targets
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
        merged = lora_lib.merge(params, lora, conf.lora_alpha, rank)
        nnx.replace_by_pure_dict(state, merged)
        nnx.update(decoder.model, state)
        decoder = LoadedDecoder(decoder.model, decoder.tokenizer, str(path), decoder.tokenizer_error)
    projector = load_projector(path, conf.projector, conf.embedding_size, decoder.config.hidden_size,
                               options=conf.projector_options, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype), mesh=mesh)
    return decoder, projector
