"""PERankConfig: the typed settings of a PE-Rank model, the ONLY reader and writer of its config.json.

Each field states its one default and its allowed range / choices (`perank_jax.core.config.setting`);
rules that other modules own (the projector's options: perank_jax.models.projector; the feedback
pair: perank_jax.listwise.feedback) are checked by calling them. A full checkpoint's config.json also holds
the HF decoder's fields: they are kept in `hf` and written back unchanged.

Old files keep loading: the released `embed_mistral` layout, and `projector_type` (mlp<N>x_gelu,
linear, identity) in place of `projector` + `projector_options` (written back too, for the kinds it
can express). Overrides (CLI flags, tables methods, tools) go through `replace`, which re-validates.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from perank_jax.core.atomic import atomic_json
from perank_jax.core.config import check_settings, settings_rules, setting
from perank_jax.core.config_files import read_config_json
from perank_jax.core.constants import DECODE_MODES, ENCODER_MAX_LENGTH
from perank_jax.listwise.feedback import FEEDBACK_KEYS, FEEDBACK_TEMPERATURE, FEEDBACK_WEIGHT, feedback_fields
from perank_jax.models import lora as lora_lib
from perank_jax.models.pooling import POOLINGS
from perank_jax.models.projector import check_projector, legacy_kind, legacy_name, options_dict
from perank_jax.listwise.prompts import TEMPLATES

MODEL_TYPES = ("embed_mistral", "mistral", "llama")
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class PERankConfig:
    perank_format: str | None = setting(str, None, choices=("adapter",))   # "adapter": projector + LoRA files
    model_type: str | None = setting(str, None, choices=MODEL_TYPES)        # the decoder family
    projector: str = setting(str, "mlp")             # a registered name or "pkg.module:Class"
    projector_options: dict = setting(dict, {})      # the projector's own typed options (filled in)
    embedding_size: int | None = setting(int, None, 1, 1 << 17)   # the encoder's dimension
    hidden_size: int | None = setting(int, None, 1, 1 << 17)      # the LLM's
    base_decoder: str | None = setting(str, None)    # adapters: the decoder directory or `packaged:` name
    encoder_name: str = setting(str, "")
    encoder_pooling: str | None = setting(str, None, choices=POOLINGS)   # None: the encoder's own config
    encoder_max_length: int = setting(int, ENCODER_MAX_LENGTH, 2, 1 << 20)
    prompt_template: str = setting(str, "paper", choices=tuple(TEMPLATES))
    default_mode: str = setting(str, "decode", choices=DECODE_MODES)
    query_token: bool = setting(bool, False)
    query_scale: float = setting(float, 1.0, 0.0, 1e6)    # > 0: the query slot's vector times this
    query_feedback_weight: float = FEEDBACK_WEIGHT.setting()        # 0: off (listwise.feedback)
    query_feedback_temperature: float = FEEDBACK_TEMPERATURE.setting()
    lora_rank: int = setting(int, 0, 0, 4096)
    lora_alpha: float = setting(float, 16.0, 0.0, 1e6)
    lora_targets: list = setting(list, [], choices=tuple(lora_lib.IN_DIMS))
    hf: dict = field(default_factory=dict, compare=True)  # the HF decoder's fields (full checkpoints)

    # --- reading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, where: str = "PE-Rank config") -> "PERankConfig":
        """Checked config from a config.json-like mapping (other keys go to `hf`); one ValueError
        naming `where` and the field otherwise."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        rules = settings_rules(cls)
        data = dict(data)
        data = {**(data.pop("hf", None) or {}), **data}
        hf = {k: data.pop(k) for k in list(data) if k not in rules and k != "projector_type"}
        old = data.pop("projector_type", None)
        try:
            if old is not None:
                name, opts = legacy_kind(old)
                if data.get("projector") is None:
                    data["projector"], data["projector_options"] = name, {**opts, **(data.get("projector_options") or {})}
            conf = check_settings(cls, data, where)
            name, opts = check_projector(conf.projector, conf.projector_options, f"{where}: projector_options")
            opts = options_dict(opts)
            if old is not None and legacy_name(name, opts) != old:
                raise ValueError(f"{where}: projector_type {old!r} disagrees with projector {conf.projector!r} "
                                 f"options {opts}")
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None
        if conf.lora_rank == 0 and conf.lora_targets and conf.perank_format == "adapter":
            raise ValueError(f"{where}: lora_rank is 0 but lora_targets lists {conf.lora_targets}")
        embedding = conf.embedding_size
        if embedding is None and name == "identity":
            embedding = conf.hidden_size
        return dataclasses.replace(conf, projector=name, projector_options=opts, embedding_size=embedding, hf=hf)

    @classmethod
    def read(cls, directory) -> "PERankConfig":
        """`directory/config.json` of a PE-Rank checkpoint or adapter, checked."""
        path = Path(directory) / CONFIG_FILE
        data = read_config_json(directory, ValueError, FileNotFoundError, expected="a PE-Rank checkpoint directory")
        if data.get("model_type") not in MODEL_TYPES:
            raise ValueError(f"{path}: model_type {data.get('model_type')!r} is not a PE-Rank decoder "
                             f"(expected one of {MODEL_TYPES})")
        conf = cls.from_dict(data, str(path))
        if conf.embedding_size is None:
            raise ValueError(f"{path}: field 'embedding_size' (the encoder's dimension) is required")
        if conf.perank_format == "adapter" and not conf.base_decoder:
            raise ValueError(f"{path}: field 'base_decoder' is required in an adapter checkpoint")
        return conf

    # --- overriding and writing ------------------------------------------------------------
    def replace(self, where: str = "PE-Rank config", **changes) -> "PERankConfig":
        """A copy with `changes` applied, checked again (a bad value names `where` and the field)."""
        unknown = sorted(set(changes) - set(settings_rules(type(self))))
        if unknown:
            raise ValueError(f"{where}: unknown PE-Rank config field {unknown[0]!r}")
        if "projector" in changes and "projector_options" not in changes:
            changes["projector_options"] = {}
        return PERankConfig.from_dict({**self.fields(), **changes, "hf": self.hf}, where)

    def fields(self) -> dict:
        """The PE-Rank fields (not `hf`) by name."""
        return {name: getattr(self, name) for name in settings_rules(type(self))}

    def to_json(self) -> dict:
        """The config.json object: the HF fields, then every PE-Rank field that is set; the feedback
        pair only when it is on, `projector_type` too when the reference's strings can name the projector."""
        out = dict(self.hf)
        for name in settings_rules(type(self)):
            value = getattr(self, name)
            if value is not None and name not in FEEDBACK_KEYS:
                out[name] = value
        legacy = legacy_name(self.projector, self.projector_options)
        if legacy is not None:
            out["projector_type"] = legacy
        out.update(feedback_fields(self.query_feedback_weight, self.query_feedback_temperature))
        return out

    def write(self, directory) -> Path:
        """Write `directory/config.json` atomically (the one place a PE-Rank config.json is written)."""
        return atomic_json(Path(directory) / CONFIG_FILE, self.to_json())

    # --- what other modules read -------------------------------------------------------------
    def encoder_settings(self) -> dict:
        """How this model encodes passages: the ONE source of the settings `from_pretrained` loads the
        encoder with, `perank encode --model` writes a cache with and the cache check compares."""
        return {"pooling": self.encoder_pooling or None, "normalize": True,
                "max_length": self.encoder_max_length, "dtype": "float32"}

    @property
    def feedback(self) -> tuple[float, float]:
        return self.query_feedback_weight, self.query_feedback_temperature

    def __getitem__(self, key: str):
        """Read access by config.json key (as when `ranker.config` was a dict)."""
        if key == "projector_type":
            return legacy_name(self.projector, self.projector_options)
        if key in settings_rules(type(self)):
            return getattr(self, key)
        if key in self.hf:
            return self.hf[key]
        raise KeyError(key)

    def get(self, key: str, default=None):
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None else value


PERANK_RULES = settings_rules(PERankConfig)   # each field's rule, for the configs and flags that mirror a field
