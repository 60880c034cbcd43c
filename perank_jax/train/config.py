"""Typed training configuration (YAML in configs/, parsed strictly by perank_jax.core.config).

    perank train configs/tiny.stage2.yaml data.train=... optim.lr=1e-4

Every section is a dataclass; unknown keys and wrong types are errors naming the key. Each field's
range or choices is stated once, on the field (`perank_jax.core.config.setting`; the settings an export keeps
take PERankConfig's own rules), and checked by the one checker every config and CLI flag goes through;
`TrainConfig.__post_init__` holds only the rules between fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from perank_jax.core.config import SEED, ConfigError, Field, from_dict, setting
from perank_jax.core.config_files import load_yaml
from perank_jax.core.constants import COMPUTE_DTYPES, WEIGHTINGS
from perank_jax.listwise.feedback import QUERY_FEEDBACK
from perank_jax.models.lora import DEFAULT_TARGETS
from perank_jax.models.projector import check_projector
from perank_jax.core.sharding import AXIS_RULES
from perank_jax.weights.perank_config import PERANK_RULES as PERANK, PERankConfig


POSITIVE = Field(int, None, 1)                  # counts: >= 1
COUNT = Field(int, None, 0)                     # >= 0
WEIGHT = Field(float, None, 0, lo_open=False)   # loss weights, decay, clipping: >= 0


@dataclass
class ModelConfig:
    decoder: str = ""                      # HF directory (safetensors) or a Llama-family .gguf
    encoder: str | None = None             # HF encoder directory: embeds the passages once, frozen
    projector: str = "mlp2x_gelu"          # a registered projector (linear | identity | mlp | ...; the reference's
                                           # mlpNx_gelu), or "pkg.module:Class" (perank_jax.models.projector)
    projector_options: dict = field(default_factory=dict)   # the projector's own typed options
    projector_init: str | None = None      # a stage-1 export (directory) to start from
    projector_isometry: float | None = setting(float, None, 0)  # linear projector without projector_init: start
                                           # from a random isometry times this (keeps the encoder's geometry)
    embedding_dim: int | None = POSITIVE.setting()   # required when no encoder is given (precomputed table)
    prompt_template: str = PERANK["prompt_template"].setting()   # stage 2: the records' user turn, saved in the export
    query_token: bool = False              # stage 2: records carry `query_text` (its embedding opens the answer)
    query_scale: float = PERANK["query_scale"].setting()   # stage 2: the query slot's vector times this
    query_feedback: list[float] = QUERY_FEEDBACK.setting()   # stage 2: [weight, temperature] (0 weight: off)
                                           # of the candidate-aware query (perank_jax.listwise.feedback) over each list's
                                           # passages, in training and saved for inference; weight 0 = off
    default_mode: str = PERANK["default_mode"].setting()   # saved in the export: `perank rerank`'s mode for it


@dataclass
class DataConfig:
    train: str = ""                        # reference-format JSONL
    eval: str | None = None                # held-out JSONL of the same stage
    embeddings: str | None = None          # .npz table {texts, vectors}: instead of running the encoder
    embedding_cache: str | None = None     # encoder cache directory (perank_jax.data.embcache)
    encoder_max_len: int = PERANK["encoder_max_length"].setting(128)   # the reference trains with 128 tokens
    append_eos: bool = False               # the reference appended the encoder's EOS in training
    max_len: int = POSITIVE.setting(512)
    buckets: list[int] = setting(list, [512], 1, items=int)
    max_passages: int = POSITIVE.setting(20)
    use_content_view: bool = True          # stage 2: second (with-content) view, loss2 and KL
    seed: int = SEED.setting()


@dataclass
class OptimConfig:
    lr: float = setting(float, 1e-3, 0)
    warmup_ratio: float = setting(float, 0.03, 0, 1, lo_open=False, hi_open=True)
    schedule: str = setting(str, "cosine", choices=("cosine", "constant"))
    weight_decay: float = WEIGHT.setting(0.0)
    b1: float = setting(float, 0.9, 0, 1, lo_open=False, hi_open=True)
    b2: float = setting(float, 0.999, 0, 1, lo_open=False, hi_open=True)
    eps: float = setting(float, 1e-8, 0)
    clip_norm: float = WEIGHT.setting(1.0)   # 0: off
    epochs: float = setting(float, 1.0, 0)
    max_steps: int | None = POSITIVE.setting()   # overrides epochs


@dataclass
class LossConfig:
    w1: float = WEIGHT.setting(1.0)        # ListMLE on the embedding-only view
    w2: float = WEIGHT.setting(1.0)        # ListMLE on the with-content view
    w_kl: float = WEIGHT.setting(0.2)      # KL(softmax(L2) || softmax(L1))
    weighting: str = setting(str, "mean", choices=WEIGHTINGS)   # mean (reference) | pow2 (step j weighted 2^-j)
    w_single: float = WEIGHT.setting(0.0)  # ListMLE of the FIRST step's scores over the whole order
                                           # (what single-pass ranking sorts by; off in the paper)


@dataclass
class LoraConfig:
    rank: int = PERANK["lora_rank"].setting()     # 0: full fine-tune of the decoder in stage 2
    alpha: float = PERANK["lora_alpha"].setting()
    targets: list[str] = PERANK["lora_targets"].setting(list(DEFAULT_TARGETS))


@dataclass
class MeshConfig:
    shape: list[int] = setting(list, [1, 1, 1], 1, items=int, also=(-1,))   # (data, fsdp, tensor); one -1 = the rest
    rules: list = AXIS_RULES.setting()     # [[logical axis, mesh axis | [mesh axes] | null], ...] over the default
                                           # table (perank_jax.core.sharding.RULES): where each weight is placed
    distributed: bool = False              # call jax.distributed.initialize
    coordinator_address: str | None = None
    num_processes: int | None = POSITIVE.setting()
    process_id: int | None = COUNT.setting()


@dataclass
class CheckpointConfig:
    every: int = COUNT.setting(500)        # steps between checkpoints (0: only at the end)
    keep: int = POSITIVE.setting(2)        # keep the last k
    resume: bool = True                    # continue from the latest checkpoint in output_dir


@dataclass
class TrainConfig:
    stage: int = setting(int, 2, 1, 2)
    output_dir: str = "runs/train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    global_batch: int = POSITIVE.setting(4)
    grad_accum: int = POSITIVE.setting(1)   # microbatches per step (global_batch % grad_accum == 0)
    compute_dtype: str = setting(str, "float32", choices=COMPUTE_DTYPES)   # float32 | bfloat16
    param_dtype: str = setting(str, "float32", choices=COMPUTE_DTYPES)     # master weights and optimiser state
    remat: bool = False
    log_every: int = POSITIVE.setting(1)
    eval_every: int = COUNT.setting(0)     # 0: evaluate only at the end (when data.eval is set)
    seed: int = SEED.setting()
    progress: bool = True
    xla_options: dict = field(default_factory=dict)   # XLA compiler options for the step, e.g.
                                                      # {xla_backend_optimization_level: 0} for fast tests

    def __post_init__(self):
        """The rules between fields (each field's own range is its `setting`, checked by from_dict)."""
        if self.global_batch % self.grad_accum:
            raise ConfigError(f"global_batch {self.global_batch} must be a multiple of grad_accum {self.grad_accum}")
        o, m = self.optim, self.model
        try:
            check_projector(m.projector, m.projector_options, "model.projector_options")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if o.lr > 0.1:
            import warnings
            warnings.warn(f"optim.lr = {o.lr} is unusually large for Adam (typical: 1e-5 .. 1e-2)", stacklevel=2)
        if m.query_feedback[0] > 0 and not (self.stage == 2 and m.query_token):
            raise ConfigError("model.query_feedback needs stage 2 with model.query_token: true (it moves the query's vector)")
        if self.stage == 1 and self.lora.rank:
            raise ConfigError("lora applies to stage 2 only (stage 1 trains the projector alone)")
        if self.data.max_len > max(self.data.buckets, default=0):
            raise ConfigError(f"data.max_len {self.data.max_len} exceeds the largest bucket "
                              f"{max(self.data.buckets, default=None)}")
        if sum(1 for s in self.mesh.shape if s == -1) > 1 or len(self.mesh.shape) != 3:
            raise ConfigError(f"mesh.shape must have 3 entries with at most one -1, got {self.mesh.shape}")

    def perank_config(self, **changes) -> PERankConfig:
        """The PE-Rank model settings this run trains (what its export's config.json records)."""
        m = self.model
        return PERankConfig.from_dict({
            "projector": m.projector, "projector_options": m.projector_options,
            "encoder_max_length": self.data.encoder_max_len, "prompt_template": m.prompt_template,
            "query_token": m.query_token, "query_scale": m.query_scale, "default_mode": m.default_mode,
            "query_feedback_weight": m.query_feedback[0], "query_feedback_temperature": m.query_feedback[1],
            **changes}, "training config model")


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Parse a YAML config with `key.sub=value` overrides (paths in it are relative to the CWD)."""
    return load_yaml(TrainConfig, path, overrides)


def train_config(data: dict) -> TrainConfig:
    return from_dict(TrainConfig, data)
