"""Layer 5, training both PE-Rank stages as sharded jit steps, checkpointed, resumable and exported.

    config         TrainConfig (YAML in configs/, parsed strictly), load_train_config, train_config
    data           records -> fixed-shape batches in a deterministic order
    embeddings     where the frozen passage embeddings of the training data come from
    losses         next-token cross-entropy (stage 1), ListMLE / KL (stage 2)
    step           TrainStep: the sharded, jit-compiled steps of both stages
    loop           Run, train, fit (the training entry), export_latest
    checkpointing  orbax checkpoints with exact resume
    metrics_log    the metrics log and its plot
    export         what a run exports (stage 1 a projector, stage 2 a PE-Rank checkpoint or adapter)
"""
from perank_jax.train.config import TrainConfig, load_train_config, train_config
from perank_jax.train.embeddings import cache_embedder, save_table
from perank_jax.train.loop import Run, Trained, export_latest, fit, train
from perank_jax.train.step import TrainStep

__all__ = [
    "TrainConfig", "load_train_config", "train_config", "cache_embedder", "save_table",
    "Run", "Trained", "export_latest", "fit", "train", "TrainStep",
]
