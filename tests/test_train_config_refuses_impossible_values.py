"""Training configs refuse impossible numeric values at the boundary, naming the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from perank_jax.config import ConfigError
from perank_jax.train.config import load_train_config

STAGE2 = Path(__file__).resolve().parent.parent / "configs" / "smollm2-minilm.stage2.yaml"


@pytest.mark.parametrize("override", ["optim.lr=-1e-4", "optim.lr=0", "optim.epochs=0", "optim.max_steps=0",
                                      "optim.warmup_ratio=1.5", "model.query_scale=0", "data.max_passages=0",
                                      "lora.rank=-2", "checkpoint.keep=0", "model.projector_isometry=-1"])
def test_impossible_value_is_a_config_error_naming_the_field(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_train_config(STAGE2, [override])


def test_the_shipped_recipe_values_are_accepted():
    cfg = load_train_config(STAGE2)
    assert cfg.optim.lr > 0 and cfg.model.query_scale == 300.0


def test_every_training_config_in_configs_parses():
    files = sorted(STAGE2.parent.glob("*.stage[12].yaml"))
    assert len(files) >= 6
    for f in files:
        cfg = load_train_config(f)
        assert cfg.stage == (1 if f.name.endswith("stage1.yaml") else 2), f
