"""The logical-axis rules are a training-config field (`mesh.rules`, MaxText's logical_axis_rules): its
default is the table in perank_jax.core.sharding and places every weight as before; pairs in YAML move a weight
on the (2, 4) mesh; an unknown logical or mesh axis is one error naming the file and key."""
from __future__ import annotations

from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from helpers_cli import one_line_error
from perank_jax.core.config import ConfigError
from perank_jax.core.sharding import RULES, named_sharding
from perank_jax.train.config import load_train_config

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.stage2.yaml"


def config_file(tmp_path: Path, rules: str = "") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"base: {TINY}\noutput_dir: {tmp_path / 'run'}\n"
                    f"mesh: {{shape: [1, 2, 4]{', rules: ' + rules if rules else ''}}}\n")
    return path


def placements(cfg) -> dict:
    """{weight name: PartitionSpec} of a tiny decoder's weights on the (2, 4) mesh under `cfg`'s rules: what
    `named_sharding` (the one placement of load_decoder, load_projector and the training step) gives."""
    from fixtures.decoders import tiny_decoder_config
    from perank_jax.models.decoder import param_specs
    from perank_jax.core.sharding import axis_rules, make_mesh
    mesh = make_mesh((1, 2, 4))
    specs = param_specs(tiny_decoder_config(vocab_size=64, hidden=32))
    if cfg is None:                            # today's placement: the table itself, no config involved
        return {name: named_sharding(mesh, axes, shape).spec for name, (shape, axes) in specs.items()}
    with axis_rules(cfg.mesh.rules):
        return {name: named_sharding(mesh, axes, shape).spec for name, (shape, axes) in specs.items()}


def test_the_default_rules_are_todays_table_and_an_override_in_yaml_moves_a_weight(tmp_path):
    default = load_train_config(config_file(tmp_path))
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in default.mesh.rules} == RULES
    before = placements(default)
    assert before == placements(None)
    assert before["embedding"] == P("tensor", "fsdp") and before["gate"] == P(None, "fsdp", "tensor")
    moved = load_train_config(config_file(tmp_path, "[[embed, tensor], [vocab, null]]"))
    after = placements(moved)
    assert after["embedding"] == P(None, "tensor") and after["gate"] == P(None, "tensor", None)
    assert after["attn_norm"] == before["attn_norm"]        # axes the override does not name keep the table's
    assert placements(None) == before                       # and outside the run the table is back


def test_a_training_run_places_its_weights_and_traces_its_steps_under_its_own_rules(tmp_path, monkeypatch):
    """`Run` loads and places the weights under the config's rules; its TrainStep enters them again for
    every step, evaluation, initial state and export it makes later (a Run used outside `fit`, as
    `export_latest` does, traces as it placed)."""
    from types import SimpleNamespace
    from perank_jax.core.sharding import current_rules
    from perank_jax.train import loop
    from perank_jax.train.step import TrainStep
    cfg = load_train_config(config_file(tmp_path, "[[embed, tensor]]"))
    seen = []
    monkeypatch.setattr(loop.Run, "_build", lambda self, cfg: seen.append(("Run", current_rules()["embed"])))
    loop.Run(cfg)
    record = lambda what: lambda *a: seen.append((what, current_rules()["embed"]))  # noqa: E731
    step = SimpleNamespace(rules=cfg.mesh.rules, frozen={}, _jits={"step": record("step"), "eval": record("eval")},
                           fns=SimpleNamespace(decoder_params=record("export")), _init_state=record("init"))
    TrainStep.step(step, {}, {})
    TrainStep.evaluate(step, {}, {})
    TrainStep.init_state(step)
    TrainStep.decoder_params(step, {})
    assert seen == [(w, "tensor") for w in ("Run", "step", "eval", "init", "export")] and current_rules() == RULES


@pytest.mark.parametrize("rules,expect", [
    ("[[embd, tensor]]", "mesh.rules[0]: unknown logical axis 'embd'"),
    ("[[embed, gpu]]", "mesh.rules[0]: unknown mesh axis in 'gpu'"),
    ("[[embed, [fsdp, gpu]]]", "mesh.rules[0]: unknown mesh axis in ['fsdp', 'gpu']"),
    ("[[mlp, null], [mlp, tensor]]", "mesh.rules[1]: logical axis 'mlp' is named twice"),
    ("[embed]", "mesh.rules[0] must be a [logical axis, mesh axis | null] pair, got 'embed'"),
])
def test_bad_rules_are_one_error_naming_the_file_and_key(tmp_path, capsys, rules, expect):
    with pytest.raises(ConfigError) as e:
        load_train_config(TINY, [f"mesh.rules={rules}"])
    assert str(e.value) == f"{TINY}: {expect}" or str(e.value).startswith(f"{TINY}: {expect} ("), str(e.value)
    from perank_jax.cli import main
    one_line_error(capsys, main(["train", str(TINY), f"mesh.rules={rules}", f"output_dir={tmp_path / 'o'}"]), expect)
    assert not (tmp_path / "o").exists()
