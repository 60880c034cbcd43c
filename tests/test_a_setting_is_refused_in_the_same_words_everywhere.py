"""Each setting's range or choices is stated once, on its field (`perank_jax.core.config.setting`), and one
checker applies it: a value out of range is ONE line naming where it came from (`--flag`, or `file: key`)
with the same words whether it came from a CLI flag, a training config, a tables config or a model's
config.json."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest

from helpers_cli import one_line_error
from perank_jax.cli import main
from perank_jax.core.config import ConfigError, settings_rules

ROOT = Path(__file__).resolve().parent.parent
STAGE2 = ROOT / "configs" / "smollm2-minilm.stage2.yaml"


def error_line(capsys, argv) -> str:
    """The one error line of `perank ARGV` without its `perank CMD: error: ` lead and `(see ...)` tail."""
    err = one_line_error(capsys, main(argv), ": error: ").strip()
    msg = err.split(": error: ", 1)[1]
    return msg.split(" (see perank ")[0]


def tables_config(tmp_path, method: str = "", top: str = "") -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(f"out_dir: {tmp_path / 'out'}\n{top}"
                    f"datasets: [{{name: x, qrels: {tmp_path / 'q.txt'}, requests: {tmp_path / 'r.jsonl'}}}]\n"
                    f"methods: [{{name: p, kind: perank, checkpoint: {tmp_path / 'ck'}{method}}}]\n")
    return path


@pytest.mark.parametrize("value,shown", [("0", "0.0"), ("-3", "-3.0"), ("2e6", "2000000.0"), ("nan", "nan")])
def test_query_scale_out_of_range_reads_the_same_from_a_flag_a_training_config_and_a_tables_config(
        tmp_path, capsys, value, shown):
    yaml_value = ".nan" if value == "nan" else value
    body = f"must be > 0 and <= 1e+06, got {shown}"
    tables = tables_config(tmp_path, f", query_scale: {yaml_value}")
    side_by_side = {
        "flag": error_line(capsys, ["rerank", "--query-scale", value]),
        "training config": error_line(capsys, ["train", str(STAGE2), f"model.query_scale={yaml_value}"]),
        "tables config": error_line(capsys, ["tables", str(tables)]),
    }
    assert side_by_side == {"flag": f"--query-scale {body}",
                            "training config": f"{STAGE2}: model.query_scale {body}",
                            "tables config": f"{tables}: methods[0].query_scale {body}"}
    from perank_jax.weights.perank_config import PERankConfig      # a model's config.json: the same rule
    with pytest.raises(ValueError) as e:
        PERankConfig.from_dict({"query_scale": float(value)}, "ck/config.json")
    assert str(e.value) == f"ck/config.json: query_scale {body}"


def test_a_window_of_one_reads_the_same_from_rerank_serve_and_a_tables_config(tmp_path, capsys):
    body = "must be 0 or in [2, 1048576], got 1"
    tables = tables_config(tmp_path, top="window: 1\n")
    assert error_line(capsys, ["rerank", "--window", "1"]) == f"--window {body}"
    assert error_line(capsys, ["serve", "--window", "1"]) == f"--window {body}"
    assert error_line(capsys, ["tables", str(tables)]) == f"{tables}: window {body}"
    set_by_flag = error_line(capsys, ["tables", str(tables_config(tmp_path)), "--set", "window=1"])
    assert set_by_flag == f"{tables}: window {body}"


def test_a_stride_longer_than_its_window_reads_the_same_from_rerank_serve_and_a_tables_config(tmp_path, capsys):
    """The one rule between the two settings (listwise.windows.check_windows), before any model loads."""
    body = "must be <= window (4), got 6 (passages between windows would never be reranked)"
    tables = tables_config(tmp_path, top="window: 4\nstride: 6\n")
    assert error_line(capsys, ["rerank", "--window", "4", "--stride", "6"]) == \
        f"--stride {body.replace('window', '--window', 1)}"
    assert error_line(capsys, ["serve", "--window", "4", "--stride", "6"]) == f"serve setting stride {body}"
    assert error_line(capsys, ["tables", str(tables)]) == f"{tables}: stride {body}"
    from perank_jax.listwise.windows import check_windows
    check_windows(0, 30)                       # one window over all candidates takes any stride
    check_windows(None, 30)
    check_windows(6, 6)


@pytest.mark.parametrize("override,expect", [
    ("optim.warmup_ratio=1", "optim.warmup_ratio must be >= 0 and < 1, got 1.0"),
    ("optim.schedule=linear", "optim.schedule must be one of ['cosine', 'constant'], got 'linear'"),
    ("data.buckets=[128, 0]", "data.buckets[1] must be >= 1, got 0"),
    ("data.encoder_max_len=1", "data.encoder_max_len must be in [2, 1048576], got 1"),
    ("lora.targets=[q_proj, nope]", "lora.targets must be a list of one of"),
    ("mesh.shape=[2, 0, -1]", "mesh.shape[1] must be -1 or >= 1, got 0"),
    ("compute_dtype=float16", "compute_dtype must be one of ['float32', 'bfloat16'], got 'float16'"),
    ("seed=-1", "seed must be in [0, 4294967295], got -1"),
])
def test_a_training_field_out_of_range_names_the_file_and_key(override, expect):
    from perank_jax.train.config import load_train_config
    with pytest.raises(ConfigError) as e:
        load_train_config(STAGE2, [override])
    assert str(e.value).startswith(f"{STAGE2}: {expect}"), str(e.value)


def config_classes():
    from perank_jax.evaluate.datasets import DatasetSpec
    from perank_jax.evaluate.tables import MethodSpec, TablesConfig
    from perank_jax.serve.settings import ServeSettings
    from perank_jax.train import config as train
    from perank_jax.weights.perank_config import PERankConfig
    sections = [train.TrainConfig, train.ModelConfig, train.DataConfig, train.OptimConfig, train.LossConfig,
                train.LoraConfig, train.MeshConfig, train.CheckpointConfig]
    return [*sections, TablesConfig, MethodSpec, DatasetSpec, ServeSettings, PERankConfig]


def test_every_number_a_config_takes_states_its_range_on_its_field():
    """An int or float field without a rule would be a value no checker looks at."""
    bare = []
    for cls in config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if typing.get_origin(tp) in (typing.Union, types.UnionType):
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            if tp in (int, float) and "rule" not in f.metadata:
                bare.append(f"{cls.__name__}.{f.name}")
    assert not bare, bare


def test_every_default_passes_its_own_rule():
    for cls in config_classes():
        for name, rule in settings_rules(cls).items():
            default = next(f for f in dataclasses.fields(cls) if f.name == name)
            value = default.default if default.default is not dataclasses.MISSING else (
                default.default_factory() if default.default_factory is not dataclasses.MISSING else None)
            if value is not None:
                assert rule.validate(f"{cls.__name__}.{name}", value) == value, (cls, name)
