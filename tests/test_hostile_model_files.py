"""Hostile model files and configs (issue 24): every one is refused as ONE ValueError line naming the
file and field / tensor, in bounded time and memory; nothing is written for them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures import make_tiny_hf_decoder
from helpers_hostile import VALID_CONFIG, gguf_bytes, safetensors_bytes, valid_safetensors
from perank_jax.cli import main

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------- bounded time and memory (subprocess)
def test_hostile_files_are_refused_in_one_line_under_2gb_in_seconds(tmp_path):
    """The named cases of issue 24 and a fixed-seed hypothesis run over random bytes and mutations of
    tiny valid safetensors / GGUF / config.json / YAML files, in a subprocess under RLIMIT_AS = 2 GiB
    (see tests/hostile_files_worker.py for why 2 GiB is honest with jax imported)."""
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, str(HERE / "hostile_files_worker.py"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    bad = [c for c in res["named"] if c["outcome"] != "refused" or c["fragment"] not in c["message"]
           or c["seconds"] > 2]
    assert not bad, bad
    assert len(res["fuzzed"]) >= 150
    crashed = [c for c in res["fuzzed"] if c["outcome"] == "crash" or c["seconds"] > 2]
    assert not crashed, crashed[:5]
    disagree = [c for c in res["fuzzed"] if c.get("library_agrees") is False]
    assert not disagree, disagree[:5]


# ---------------------------------------------------------------- GGUF
def test_gguf_array_claiming_2_62_elements_is_refused_before_any_allocation(tmp_path):
    import gguf  # noqa: F401  (imported before the clock starts)
    from perank_jax.weights.gguf import GGUFSource
    from perank_jax.weights.io import WeightError
    from helpers_hostile import named_cases
    data = next(d for case, _, d, _ in named_cases(tmp_path) if "2^62" in case)
    assert len(data) == 68
    f = tmp_path / "evil.gguf"
    f.write_bytes(data)
    t = time.perf_counter()
    with pytest.raises(WeightError, match=r"evil.gguf: not a readable GGUF file .*array of 4611686018427387904"):
        GGUFSource(f)
    assert time.perf_counter() - t < 1


@pytest.mark.parametrize("heads,layers,expect", [(0, 1, "num_attention_heads must be in"),
                                                  (2, 10 ** 9, "num_hidden_layers must be in")])
def test_convert_writes_nothing_for_a_gguf_with_impossible_metadata(tmp_path, capsys, heads, layers, expect):
    f = tmp_path / "m.gguf"
    f.write_bytes(gguf_bytes(tmp_path, heads=heads, layers=layers))
    assert main(["convert", str(f), str(tmp_path / "out")]) == 2
    assert expect in one_line_error(capsys)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "w.gguf"]


# ---------------------------------------------------------------- safetensors: the library's checks
OK_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("name,data,expect", [
    ("negative offsets", safetensors_bytes({"a": {**OK_ENTRY, "data_offsets": [-8, 0]}}, b"\0" * 8), "usize"),
    ("overlapping", safetensors_bytes({"a": OK_ENTRY, "b": OK_ENTRY}, b"\0" * 8), "invalid offset for tensor"),
    ("float offsets", safetensors_bytes({"a": {**OK_ENTRY, "data_offsets": [0.0, 8.0]}}, b"\0" * 8), "floating"),
    ("a gap before the data", safetensors_bytes({"a": {**OK_ENTRY, "shape": [1], "data_offsets": [4, 8]}},
                                                b"\0" * 8), "invalid offset"),
    ("header a list", safetensors_bytes([1, 2]), "sequence"),
    ("no dtype", safetensors_bytes({"a": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "`dtype`"),
    ("nested deep", safetensors_bytes(b'{"a":' + b"[" * 50000 + b"]" * 50000 + b"}"), "recursion"),
    ("shape overflows", safetensors_bytes({"a": {**OK_ENTRY, "shape": [2 ** 62, 4]}}, b"\0" * 8), "overflow"),
])
def test_safetensors_headers_the_library_refuses_are_refused(tmp_path, name, data, expect):
    from safetensors import safe_open
    from perank_jax.weights.io import SafetensorsFile, WeightError
    f = tmp_path / "model.safetensors"
    f.write_bytes(data)
    with pytest.raises(Exception):
        safe_open(str(f), "numpy")
    with pytest.raises(WeightError, match=rf"model.safetensors: not a valid safetensors file \(.*{expect}") as e:
        SafetensorsFile(f)
    assert "\n" not in str(e.value)


def test_safetensors_reads_stay_lazy_memmaps_of_the_validated_offsets(tmp_path):
    import ml_dtypes
    from safetensors.numpy import save_file
    from perank_jax.weights.io import SafetensorsFile
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.linspace(-1, 1, 6).astype(ml_dtypes.bfloat16)
    save_file({"a": a, "b": b}, str(tmp_path / "m.safetensors"))
    f = SafetensorsFile(tmp_path / "m.safetensors")
    assert isinstance(f.get("a"), np.memmap) and f.shape("b") == (6,)
    np.testing.assert_array_equal(f.get("a")[1:, 2:], a[1:, 2:])
    np.testing.assert_array_equal(np.asarray(f.get("b"), np.float32), b.astype(np.float32))


# ---------------------------------------------------------------- decoder config.json values
@pytest.mark.parametrize("edit,expect", [
    ({"num_hidden_layers": 10 ** 9}, "num_hidden_layers must be in [1, 1024]"),
    ({"num_attention_heads": 0}, "num_attention_heads must be in"),
    ({"num_attention_heads": None}, "num_attention_heads is required"),
    ({"num_attention_heads": "4"}, "num_attention_heads must be an integer"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": -1}}, "rope_theta must be > 0 and <= 1e+12"),
    ({"rope_parameters": None, "rope_theta": float("inf")}, "rope_theta must be > 0 and <= 1e+12"),
    ({"hidden_size": 2, "head_dim": None}, "head_dim (hidden_size // num_attention_heads) must be in"),
])
def test_decoder_config_values_are_checked_before_any_shape_is_built(tmp_path, edit, expect):
    from perank_jax.weights.decoder import load_decoder
    d = tmp_path / "m"
    make_tiny_hf_decoder(d, "llama")
    conf = json.loads((d / "config.json").read_text())
    conf.update(edit)
    (d / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError) as e:
        load_decoder(d)
    assert str(e.value).startswith(str(d / "config.json")) and expect in str(e.value), e.value


@pytest.mark.parametrize("edit,expect", [({"num_hidden_layers": 10 ** 9}, "num_hidden_layers must be in [1, 256]"),
                                         ({"num_attention_heads": 0}, "num_attention_heads must be in"),
                                         ({"hidden_size": "384"}, "hidden_size must be an integer"),
                                         ({"layer_norm_eps": float("nan")}, "layer_norm_eps must be > 0 and <= 1")])
def test_encoder_config_values_are_checked_before_any_shape_is_built(tmp_path, edit, expect):
    from perank_jax.weights.encoder import load_encoder
    conf = {"model_type": "bert", "vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, **edit}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError) as e:
        load_encoder(tmp_path)
    assert str(e.value).startswith(str(tmp_path / "config.json")) and expect in str(e.value), e.value


@pytest.mark.parametrize("raw,expect", [(b"[1, 2]", "expected a JSON object at the top level, got list"),
                                        (b'{"x": "\xff"}', "not UTF-8 text"),
                                        (b"[" * 100000, "invalid JSON")])
def test_a_config_json_that_is_not_an_object_is_one_line(tmp_path, raw, expect):
    from perank_jax.weights.decoder import load_decoder
    (tmp_path / "config.json").write_bytes(raw)
    with pytest.raises(ValueError, match=f"config.json: {expect}"):
        load_decoder(tmp_path)


# ---------------------------------------------------------------- PE-Rank config.json fields
@pytest.mark.parametrize("edit,expect", [
    ({"query_token": "false"}, ": query_token must be true or false"),
    ({"query_scale": 0}, ": query_scale must be > 0 and <= 1e+06"),
    ({"query_scale": float("nan")}, ": query_scale must be > 0 and <= 1e+06"),
    ({"query_feedback_weight": float("inf")}, ": query_feedback_weight must be >= 0 and <= 1e+06, got inf"),
    ({"query_feedback_weight": -1.0}, ": query_feedback_weight must be >= 0 and <= 1e+06, got -1.0"),
    ({"query_feedback_temperature": 0}, ": query_feedback_temperature must be > 0 and <= 1e+06, got 0"),
    ({"lora_rank": -2}, ": lora_rank must be in [0, 4096]"),
    ({"embedding_size": -384}, ": embedding_size must be in"),
    ({"projector_type": "mlp1000000000x_gelu"}, "unknown projector_type"),
    ({"lora_targets": ["q", "everything"]}, ": lora_targets must be a list of one of"),
])
def test_perank_config_fields_are_checked_like_the_cli_flags(tmp_path, edit, expect):
    from perank_jax.weights.packaged import shipped_dir
    from perank_jax.weights.perank_config import PERankConfig
    conf = {"model_type": "llama", "hidden_size": 32, **json.loads((shipped_dir() / "config.json").read_text()), **edit}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError) as e:
        PERankConfig.read(tmp_path)
    assert str(e.value).startswith(str(tmp_path / "config.json")) and expect in str(e.value), e.value


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A tiny llama base decoder and a LoRA (r=2 on q) + linear projector adapter over it."""
    import jax.numpy as jnp
    from flax import nnx
    from perank_jax.models.projector import build_projector
    from perank_jax.weights.perank import save_adapter
    base = tmp_path_factory.mktemp("base")
    make_tiny_hf_decoder(base, "llama")
    out = tmp_path_factory.mktemp("adapter")
    rng = np.random.default_rng(0)
    lora = {"q": {"a": jnp.asarray(rng.normal(size=(2, 32, 2)), jnp.float32),
                  "b": jnp.asarray(rng.normal(size=(2, 2, 32)), jnp.float32)}}
    save_adapter(out, build_projector("linear", 8, 32, rngs=nnx.Rngs(0)), lora, base_decoder=str(base),
                 encoder_name="", lora_rank=2, hidden_size=32)
    return out


def _edited_adapter(src, dst, conf_edit=None, tensor_edit=None):
    import shutil
    from safetensors.numpy import load_file, save_file
    shutil.copytree(src, dst)
    if conf_edit:
        conf = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**conf, **conf_edit}))
    if tensor_edit:
        t = load_file(str(dst / "adapter.safetensors"))
        tensor_edit(t)
        save_file(t, str(dst / "adapter.safetensors"))
    return dst


def test_the_tiny_adapter_loads(tiny_adapter):
    from perank_jax.weights.perank import load_checkpoint
    conf, decoder, _ = load_checkpoint(tiny_adapter)
    assert conf["lora_rank"] == 2 and decoder.config.hidden_size == 32


def _nan(t):
    t["lora.q.b"][0, 1, 3] = np.nan


@pytest.mark.parametrize("conf_edit,tensor_edit,expect", [
    ({"lora_rank": 4}, None, "tensor 'lora.q.a' has shape (2, 32, 2), expected (2, 32, 4)"),
    (None, _nan, "tensor 'lora.q.b' contains NaN or Inf"),
    (None, lambda t: t.update({"lora.q.b": t["lora.q.b"][:, :, :16]}), "tensor 'lora.q.b' has shape (2, 2, 16)"),
    (None, lambda t: t.update({"lora.v.a": t["lora.q.a"]}), "tensor 'lora.v.a' is not one of config.json's"),
])
def test_lora_factors_are_checked_at_load_naming_the_tensor(tiny_adapter, tmp_path, conf_edit, tensor_edit, expect):
    from perank_jax.weights.perank import load_checkpoint
    d = _edited_adapter(tiny_adapter, tmp_path / "a", conf_edit, tensor_edit)
    with pytest.raises(ValueError) as e:
        load_checkpoint(d)
    assert "adapter.safetensors: " in str(e.value) and expect in str(e.value), e.value


def test_a_truncated_adapter_is_one_line_naming_the_file_and_tensor(tiny_adapter, tmp_path):
    from perank_jax.weights.perank import load_checkpoint
    d = _edited_adapter(tiny_adapter, tmp_path / "a")
    f = d / "adapter.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"adapter.safetensors: not a valid safetensors file \(tensor '.*' extends "
                                         r"past the end of the file"):
        load_checkpoint(d)


# ---------------------------------------------------------------- YAML overrides (train and tables)
LAUGHS = "{a: &a [x, x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], c: [*b, *b, *b]}"


@pytest.mark.parametrize("value,expect", [(LAUGHS, "aliases (*name) are not allowed"),
                                          ("[1, 2", "invalid YAML (while parsing a flow sequence"),
                                          ("!!python/object/apply:os.system [echo hi]", "could not determine a "
                                                                                         "constructor")])
@pytest.mark.parametrize("command", ["train", "tables"])
def test_yaml_overrides_are_one_line_naming_the_key(tmp_path, capsys, command, value, expect):
    argv = (["train", str(ROOT / "configs/tiny.stage2.yaml"), f"optim.lr={value}", f"output_dir={tmp_path}/o"]
            if command == "train" else
            ["tables", str(ROOT / "configs/tables-shipped.yaml"), "--set", f"depth={value}",
             "--set", f"out_dir={tmp_path}/o"])
    assert main(argv) == 2
    line = one_line_error(capsys)
    key = "optim.lr" if command == "train" else "depth"
    assert f"override {key}: " in line and expect in line, line
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- chat templates
@pytest.mark.parametrize("in_thread", [False, True])
def test_a_chat_template_that_loops_without_bound_is_stopped(in_thread):
    from fixtures import chat_tokenizer
    from perank_jax.listwise.prompts import TEMPLATE_SECONDS, PromptError, render_chat
    tok = chat_tokenizer()
    tok.chat_template = ("{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}"
                         "{% endfor %}")
    result = {}

    def run():
        t = time.perf_counter()
        try:
            render_chat(tok, "q")
        except PromptError as e:
            result["error"] = str(e)
        result["seconds"] = time.perf_counter() - t

    if in_thread:
        th = threading.Thread(target=run)
        th.start()
        th.join(30)
    else:
        run()
    assert "ran longer than" in result["error"] and "\n" not in result["error"]
    assert result["seconds"] < TEMPLATE_SECONDS + 3


# ---------------------------------------------------------------- CLI: measures and --model
@pytest.mark.parametrize("measure", ["nDCG@0", "P@1.5"])
def test_evaluate_refuses_a_cutoff_the_metrics_library_would_abort_on(tmp_path, measure):
    (tmp_path / "q.txt").write_text("q1 0 d1 1\n")
    (tmp_path / "r.trec").write_text("q1 Q0 d1 1 1.0 x\n")
    proc = subprocess.run([sys.executable, "-m", "perank_jax.cli", "evaluate", "--qrels", str(tmp_path / "q.txt"),
                           "--run", str(tmp_path / "r.trec"), "--measures", measure],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"measure '{measure}': the cutoff after @ must be an integer" in lines[0], lines


def test_an_empty_model_path_is_one_line(capsys):
    assert main(["rerank", "--model", ""]) == 2
    assert "the model path is empty" in capsys.readouterr().err.strip().splitlines()[-1]
