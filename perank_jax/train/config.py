"""Typed training configuration (YAML in configs/, parsed strictly by perank_jax.core.config).

    perank train configs/tiny.stage2.yaml data.train=... optim.lr=1e-4

Every section is a dataclass; unknown keys and wrong types are errors naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from perank_jax.core.constants import COMPUTE_DTYPES, WEIGHTINGS
from perank_jax.core.config import ConfigError, from_dict, load_yaml
from perank_jax.listwise.feedback import check_feedback
from perank_jax.models.lora import DEFAULT_TARGETS
from perank_jax.models.projector import check_projector
from perank_jax.weights.perank_config import PERankConfig, check_field


@dataclass
class ModelConfig:
    decoder: str = ""                      # HF directory (safetensors) or a Llama-family .gguf
    encoder: str | None = None             # HF encoder directory: embeds the passages once, frozen
    projector: str = "mlp2x_gelu"          # a registered projector (linear | identity | mlp | ...; the reference's
                                           # mlpNx_gelu), or "pkg.module:Class" (perank_jax.models.projector)
    projector_options: dict = field(default_factory=dict)   # the projector's own typed options
    projector_init: str | None = None      # a stage-1 export (directory) to start from
    projector_isometry: float | None = None  # linear projector without projector_init: start from a random
                                             # isometry times this (keeps the encoder's geometry)
    embedding_dim: int | None = None       # required when no encoder is given (precomputed table)
    prompt_template: str = "paper"         # stage 2: the records' user turn (paper | compact), saved in the export
    query_token: bool = False              # stage 2: records carry `query_text` (its embedding opens the answer)
    query_scale: float = 1.0               # stage 2: the query slot's projected vector times this (residual shortcut)
    query_feedback: list[float] = field(default_factory=lambda: [0.0, 0.01])  # stage 2: [weight, temperature]
                                           # of the candidate-aware query (perank_jax.listwise.feedback) over each list's
                                           # passages, in training and saved for inference; weight 0 = off
    default_mode: str = "decode"           # saved in the export: `perank rerank`'s mode for it (decode | single_pass)


@dataclass
class DataConfig:
    train: str = ""                        # reference-format JSONL
    eval: str | None = None                # held-out JSONL of the same stage
    embeddings: str | None = None          # .npz table {texts, vectors}: instead of running the encoder
    embedding_cache: str | None = None     # encoder cache directory (perank_jax.data.embcache)
    encoder_max_len: int = 128             # the reference trains with 128 encoder tokens
    append_eos: bool = False               # the reference appended the encoder's EOS in training
    max_len: int = 512
    buckets: list[int] = field(default_factory=lambda: [512])
    max_passages: int = 20
    use_content_view: bool = True          # stage 2: second (with-content) view, loss2 and KL
    seed: int = 0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    warmup_ratio: float = 0.03
    schedule: str = "cosine"               # cosine | constant
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int | None = None           # overrides epochs


@dataclass
class LossConfig:
    w1: float = 1.0                        # ListMLE on the embedding-only view
    w2: float = 1.0                        # ListMLE on the with-content view
    w_kl: float = 0.2                      # KL(softmax(L2) || softmax(L1))
    weighting: str = "mean"                # mean (reference) | pow2 (step j weighted 2^-j, summed)
    w_single: float = 0.0                  # ListMLE of the FIRST step's scores over the whole order
                                           # (what single-pass ranking sorts by; off in the paper)


@dataclass
class LoraConfig:
    rank: int = 0                          # 0: full fine-tune of the decoder in stage 2
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))


@dataclass
class MeshConfig:
    shape: list[int] = field(default_factory=lambda: [1, 1, 1])   # (data, fsdp, tensor); one -1 = the rest
    distributed: bool = False              # call jax.distributed.initialize
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


@dataclass
class CheckpointConfig:
    every: int = 500                       # steps between checkpoints (0: only at the end)
    keep: int = 2                          # keep the last k
    resume: bool = True                    # continue from the latest checkpoint in output_dir


@dataclass
class TrainConfig:
    stage: int = 2
    output_dir: str = "runs/train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    global_batch: int = 4
    grad_accum: int = 1                    # microbatches per step (global_batch % grad_accum == 0)
    compute_dtype: str = "float32"         # float32 | bfloat16
    param_dtype: str = "float32"           # master weights and optimiser state
    remat: bool = False
    log_every: int = 1
    eval_every: int = 0                    # 0: evaluate only at the end (when data.eval is set)
    seed: int = 0
    progress: bool = True
    xla_options: dict = field(default_factory=dict)   # XLA compiler options for the step, e.g.
                                                      # {xla_backend_optimization_level: 0} for fast tests

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage}")
        if self.global_batch < 1 or self.grad_accum < 1 or self.global_batch % self.grad_accum:
            raise ConfigError(f"global_batch {self.global_batch} must be a positive multiple of "
                              f"grad_accum {self.grad_accum}")
        for k in ("compute_dtype", "param_dtype"):
            if getattr(self, k) not in COMPUTE_DTYPES:
                raise ConfigError(f"{k} must be float32 or bfloat16, got {getattr(self, k)!r}")
        if self.loss.weighting not in WEIGHTINGS:
            raise ConfigError(f"loss.weighting must be mean or pow2, got {self.loss.weighting!r}")
        o, m, d = self.optim, self.model, self.data
        try:      # the settings a PE-Rank model keeps: their rules are PERankConfig's and the projector's
            for name in ("prompt_template", "default_mode", "query_scale"):
                check_field(name, getattr(m, name), f"model.{name}")
            check_projector(m.projector, m.projector_options, "model.projector_options")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        checks = [("optim.lr", o.lr > 0, "> 0"), ("optim.epochs", o.epochs > 0, "> 0"),
                  ("optim.max_steps", o.max_steps is None or o.max_steps >= 1, ">= 1 or null"),
                  ("optim.warmup_ratio", 0 <= o.warmup_ratio < 1, "in [0, 1)"),
                  ("optim.clip_norm", o.clip_norm >= 0, ">= 0 (0 = off)"),
                  ("optim.weight_decay", o.weight_decay >= 0, ">= 0"),
                  ("model.projector_isometry", m.projector_isometry is None or m.projector_isometry > 0, "> 0 or null"),
                  ("data.max_len", d.max_len >= 1, ">= 1"), ("data.max_passages", d.max_passages >= 1, ">= 1"),
                  ("data.encoder_max_len", d.encoder_max_len >= 1, ">= 1"), ("lora.rank", self.lora.rank >= 0, ">= 0"),
                  ("lora.alpha", self.lora.alpha > 0, "> 0"), ("loss.w_single", self.loss.w_single >= 0, ">= 0"),
                  ("checkpoint.every", self.checkpoint.every >= 0, ">= 0 (0 = only at the end)"),
                  ("checkpoint.keep", self.checkpoint.keep >= 1, ">= 1"), ("log_every", self.log_every >= 1, ">= 1")]
        for k, ok, rule in checks:
            if not ok:
                node = self
                for part in k.split("."):
                    node = getattr(node, part)
                raise ConfigError(f"{k} = {node!r} is out of range (must be {rule})")
        if o.lr > 0.1:
            import warnings
            warnings.warn(f"optim.lr = {o.lr} is unusually large for Adam (typical: 1e-5 .. 1e-2)", stacklevel=2)
        if len(m.query_feedback) != 2:
            raise ConfigError(f"model.query_feedback must be [weight, temperature], got {m.query_feedback!r}")
        try:
            m.query_feedback = list(check_feedback(*m.query_feedback))
        except ValueError as e:
            raise ConfigError(f"model.query_feedback: {e}") from None
        if m.query_feedback[0] > 0 and not (self.stage == 2 and m.query_token):
            raise ConfigError("model.query_feedback needs stage 2 with model.query_token: true (it moves the query's vector)")
        if self.stage == 1 and self.lora.rank:
            raise ConfigError("lora applies to stage 2 only (stage 1 trains the projector alone)")
        if self.data.max_len > max(self.data.buckets):
            raise ConfigError(f"data.max_len {self.data.max_len} exceeds the largest bucket {max(self.data.buckets)}")
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
