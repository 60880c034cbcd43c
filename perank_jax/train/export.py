"""What a training run exports: stage 1 the projector alone; stage 2 a full PE-Rank checkpoint
(LoRA merged into the decoder) and, for LoRA runs, the small adapter that ships."""
from __future__ import annotations

from pathlib import Path

import jax
from flax import nnx
from jax.experimental import multihost_utils

from perank_jax.core.atomic import atomic_json
from perank_jax.core.config import ConfigError
from perank_jax.models.projector import legacy_name
from perank_jax.weights.io import save_safetensors_atomic
from perank_jax.weights.packaged import resolve_model_path
from perank_jax.weights.perank import projector_fields, save_adapter, save_checkpoint


def export(run, params, out_dir: Path) -> Path:
    """Stage 1: the projector alone (projector.safetensors, torch layout, + projector_config.json);
    stage 2: a PE-Rank checkpoint directory (decoder with LoRA merged + projector) that
    PERanker.from_pretrained loads."""
    cfg, tr = run.cfg, run.trainer
    host = lambda t: multihost_utils.process_allgather(t, tiled=True) if jax.process_count() > 1 else jax.device_get(t)
    proj = nnx.merge(tr.fns.proj_gd, host(params["projector"]))
    if not run.main:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.stage == 1:
        save_safetensors_atomic(proj.export_torch("model.projector."), out_dir / "projector.safetensors",
                                metadata={"format": "pt"})
        fields = projector_fields(proj)
        conf = {"projector_type": legacy_name(fields["projector"], fields["projector_options"]), **fields,
                "decoder": resolve_model_path(cfg.model.decoder),
                "encoder_name": resolve_model_path(cfg.model.encoder) or ""}
        atomic_json(out_dir / "projector_config.json", conf)
        return out_dir
    m = cfg.model
    check_records_template(run, m.prompt_template)
    if "lora" in params:      # the small form: projector + LoRA factors over the named base decoder
        save_adapter(out_dir.parent / "adapter", proj, host(params["lora"]),
                     cfg.perank_config(model_type=run.decoder.config.model_type), dtype="float16",
                     base_decoder=portable_name(m.decoder), encoder_name=portable_name(m.encoder),
                     lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha)
    dec = nnx.merge(tr.fns.dec_gd, host(tr.decoder_params(params)))
    return save_checkpoint(out_dir, dec, proj, run.tokenizer, cfg.perank_config(),
                           encoder_name=resolve_model_path(m.encoder) or "")


def check_records_template(run, template: str) -> None:
    """Refuse (one line naming the records file and line) a run whose stage-2 records were built with
    another prompt template than `template`, the one its export records for inference."""
    other = {t: line for t, line in (getattr(run, "record_templates", None) or {}).items() if t != template}
    if other:
        t, line = next(iter(other.items()))
        raise ConfigError(f"{run.cfg.data.train}:{line}: the training records were built with prompt template {t!r} "
                          f"but model.prompt_template is {template!r}; the checkpoint would rank with a prompt it "
                          f"was not trained on (set model.prompt_template: {t}, or rebuild the records)")


def portable_name(name: str | None) -> str:
    """`packaged:` names stay names (they resolve on any machine); paths become absolute."""
    if not name:
        return ""
    return name if name.startswith("packaged:") else str(Path(resolve_model_path(name)).resolve())
