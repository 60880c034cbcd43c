"""Training configs refuse impossible numeric values at the boundary, naming the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from perank_jax.core.config import ConfigError
from perank_jax.train.config import load_train_config

STAGE2 = Path(__file__).resolve().parent.parent / "configs" / "smollm2-minilm.stage2.yaml"


@pytest.mark.parametrize("override", ["optim.lr=-1e-4", "optim.lr=0", "optim.lr=.nan", "optim.epochs=0", "optim.max_steps=0",
                                      "optim.warmup_ratio=1.5", "model.query_scale=0", "data.max_passages=0",
                                      "lora.rank=-2", "checkpoint.keep=0", "model.projector_isometry=-1",
                                      "model.query_feedback=[-1,0.01]", "model.query_feedback=[1,0]",
                                      "model.query_feedback=[1]", "model.query_token=false model.query_feedback=[1,0.01]"])
def test_impossible_value_is_a_config_error_naming_the_field(override):
    with pytest.raises(ConfigError, match=override.split()[-1].split("=")[0].replace(".", r"\.")):
        load_train_config(STAGE2, override.split())


def test_a_suspicious_learning_rate_is_a_warning_not_an_error():
    with pytest.warns(UserWarning, match="optim.lr = 0.5 is unusually large"):
        assert load_train_config(STAGE2, ["optim.lr=0.5"]).optim.lr == 0.5


def test_the_shipped_recipe_values_are_accepted():
    cfg = load_train_config(STAGE2)
    assert cfg.optim.lr > 0 and cfg.model.query_scale == 300.0
    assert load_train_config(STAGE2, ["model.query_feedback=[1,0.01]"]).model.query_feedback == [1.0, 0.01]


def test_every_file_in_configs_is_parsed_by_its_typed_loader():
    """Training configs (*.stage1/2.yaml) by load_train_config, tables configs (tables-*.yaml) by
    the tables loader, dataset blocks (datasets/*.yaml) as a DatasetSpec, model presets (models/*.yaml)
    by the preset loader, splits (splits/*.json) as query-id lists, `base:` includes resolved; a file
    no loader claims fails."""
    from perank_jax.core.config_files import load_yaml
    from perank_jax.evaluate.datasets import DatasetSpec, read_split
    from perank_jax.models.presets import load_preset
    from perank_jax.evaluate.tables import load_config
    root = STAGE2.parent
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) >= 21
    for f in files:
        if f.name.endswith((".stage1.yaml", ".stage2.yaml")):
            assert load_train_config(f).stage == (1 if f.name.endswith("stage1.yaml") else 2), f
        elif f.name.startswith("tables-") and f.suffix == ".yaml":
            cfg = load_config(f)
            assert cfg.datasets and cfg.methods, f
        elif f.parent.name == "datasets" and f.suffix == ".yaml":
            assert load_yaml(DatasetSpec, f).qrels, f
        elif f.parent.name == "models" and f.suffix == ".yaml":
            preset = load_preset(str(f))
            assert (preset.decoder or preset.encoder).hidden_size > 0, f
        elif f.parent.name == "splits" and f.suffix == ".json":
            assert len(read_split(f)) >= 2, f
        else:
            raise AssertionError(f"{f}: no typed loader parses this file; give it one here")
