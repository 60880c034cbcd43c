"""Projectors plug in by registered name or import path, and a PE-Rank model's settings are one typed
PERankConfig: it round-trips through config.json for every built-in kind, reads the reference's
`projector_type` strings, refuses a wrong field naming it, and is the only writer of config.json.
A projector defined outside the package trains, exports, and ranks from a fresh process."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_cli import one_line_error
from fixtures import stage2_folder, stage2_records, write_jsonl

from perank_jax.models.projector import build_projector, register_projector, registered_projectors
from perank_jax.models.projector_kinds import LinearProjector
from perank_jax.weights.io import save_safetensors_atomic
from perank_jax.weights.perank_config import PERankConfig
from perank_jax.weights.projector import load_projector

ROOT = Path(__file__).resolve().parent.parent
BUILTINS = [("linear", {}), ("identity", {}), ("mlp", {}), ("mlp", {"depth": 3, "width": 24, "pre_norm": "layernorm"}),
            ("mlp", {"depth": 1, "pre_norm": "rmsnorm"}), ("multi_token", {"tokens": 3}),
            ("multi_token", {"tokens": 2, "width": 24}), ("film", {})]


@pytest.mark.parametrize("name,options", BUILTINS)
def test_config_and_weights_round_trip_for_every_builtin_kind(tmp_path, name, options):
    dim = 16
    conf = PERankConfig.from_dict({"model_type": "llama", "projector": name, "projector_options": options,
                                   "embedding_size": dim, "hidden_size": dim, "encoder_name": "packaged:minilm",
                                   "query_token": True, "query_scale": 7.5, "query_feedback_weight": 0.5})
    conf.write(tmp_path)
    again = PERankConfig.read(tmp_path)
    assert again == conf and again.projector == name
    assert set(options.items()) <= set(again.projector_options.items())
    proj = build_projector(name, dim, dim, options)
    proj_x = np.random.default_rng(0).normal(size=(3, dim)).astype(np.float32)
    for key, value in proj.export_torch().items():          # perturb, so a zero init cannot pass
        proj.param_at(proj.weight_keys()[key][0])[...] = (value.T if proj.weight_keys()[key][1] else value) + 0.25
    save_safetensors_atomic(proj.export_torch(), tmp_path / "model.safetensors")
    loaded = load_projector(tmp_path, again.projector, dim, dim, options=again.projector_options)
    q = np.random.default_rng(1).normal(size=(3, dim)).astype(np.float32) if proj.uses_query else None
    out = np.asarray(proj(proj_x, q))
    assert out.shape == (3, proj.tokens_per_passage, dim)
    np.testing.assert_array_equal(np.asarray(loaded(proj_x, q)), out)


def test_the_multi_token_and_film_kinds_start_where_the_linear_kind_starts_and_film_reads_the_query():
    """With the recipe's isometric start, multi_token's k vectors (so their mean, a passage's key) and
    film's output (its query terms start at zero) equal the linear kind's; once film's query weights
    move, another query gives another output."""
    x = np.random.default_rng(0).normal(size=(4, 12)).astype(np.float32)
    q = np.random.default_rng(1).normal(size=(4, 12)).astype(np.float32)
    lin = np.asarray(build_projector("linear", 12, 8).init_isometry(3.2, seed=4)(x))[:, 0]
    multi = np.asarray(build_projector("multi_token", 12, 8, {"tokens": 4}).init_isometry(3.2, seed=4)(x))
    assert multi.shape == (4, 4, 8)
    np.testing.assert_allclose(multi, np.repeat(lin[:, None], 4, axis=1), rtol=1e-5, atol=1e-5)
    film = build_projector("film", 12, 8).init_isometry(3.2, seed=4)
    np.testing.assert_allclose(np.asarray(film(x, q))[:, 0], lin, rtol=1e-5, atol=1e-5)
    film.gamma[...] = film.gamma[...] + 0.1
    assert not np.allclose(np.asarray(film(x, q)), np.asarray(film(x, -q)))
    with pytest.raises(ValueError, match="width 0"):
        build_projector("multi_token", 12, 8, {"tokens": 2, "width": 16}).init_isometry(1.0)


@pytest.mark.parametrize("old,name,options", [
    ("mlp2x_gelu", "mlp", {"depth": 2, "width": 0, "pre_norm": "none"}),
    ("mlp5x_gelu", "mlp", {"depth": 5, "width": 0, "pre_norm": "none"}),
    ("linear", "linear", {}), ("identity", "identity", {})])
def test_reference_projector_type_strings_load_and_are_written_back(old, name, options):
    conf = PERankConfig.from_dict({"model_type": "embed_mistral", "projector_type": old, "embedding_size": 8,
                                   "hidden_size": 8, "vocab_size": 99})
    assert (conf.projector, conf.projector_options) == (name, options)
    assert conf.to_json()["projector_type"] == old and conf.hf == {"vocab_size": 99}
    if old.startswith("mlp"):
        keys = build_projector(old, 8, 8).torch_keys()
        assert sorted(keys) == sorted(f"model.projector.{2 * i}.{p}" for i in range(options["depth"])
                                      for p in ("weight", "bias"))


def test_the_shipped_adapter_config_reads_as_a_linear_projector():
    conf = PERankConfig.read(ROOT / "perank_jax" / "shipped" / "minilm")
    assert (conf.projector, conf.perank_format, conf.query_scale, conf.encoder_max_length) == \
        ("linear", "adapter", 3000.0, 256)


@pytest.mark.parametrize("edit,key", [
    ({"query_scale": 0}, ": query_scale must"), ({"query_scale": "3"}, ": query_scale must"),
    ({"encoder_max_length": 1}, ": encoder_max_length must"), ({"prompt_template": "fancy"}, ": prompt_template must"),
    ({"projector": "mlp", "projector_options": {"depth": 0}}, "): depth must"),
    ({"projector": "mlp", "projector_options": {"depth": 2.5}}, "): depth must"),
    ({"projector": "mlp", "projector_options": {"pre_norm": "batchnorm"}}, "): pre_norm must"),
    ({"projector": "mlp", "projector_options": {"widht": 3}}, "'widht'"),
    ({"projector": "linear", "projector_type": "mlp2x_gelu"}, "projector_type 'mlp2x_gelu' disagrees"),
    ({"projector": "external_projector:GatedLinear", "projector_options": {"gain": -1}}, "): gain must"),
])
def test_a_wrong_type_or_out_of_range_field_is_refused_naming_the_key(tmp_path, edit, key):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "embedding_size": 8, **edit}))
    with pytest.raises(ValueError) as e:
        PERankConfig.read(tmp_path)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "config.json")) and key in msg and "\n" not in msg, msg


def test_overrides_go_through_replace_and_are_checked_again():
    conf = PERankConfig.from_dict({"model_type": "llama", "embedding_size": 8, "query_token": True})
    assert conf.replace(query_scale=2.0).query_scale == 2.0 and conf.query_scale == 1.0
    with pytest.raises(ValueError, match=r"^--query-scale: query_scale must be > 0"):
        conf.replace("--query-scale", query_scale=-1.0)
    with pytest.raises(ValueError, match="unknown PE-Rank config field 'qeury_scale'"):
        conf.replace(qeury_scale=2.0)


def test_a_decorated_class_is_registered_and_listed():
    @register_projector("test_linear_alias")
    class Alias(LinearProjector):
        pass
    assert "test_linear_alias" in registered_projectors()
    assert isinstance(build_projector("test_linear_alias", 4, 6), Alias)


def test_an_installed_packages_entry_point_is_a_registered_name(tmp_path, monkeypatch):
    dist = tmp_path / "my_projectors-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-projectors\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[perank_jax.projectors]\ngated = external_projector:GatedLinear\n")
    assert "gated" not in registered_projectors()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "gated" in registered_projectors()
    proj = build_projector("gated", 4, 6, {"gain": 2.0})
    assert type(proj).__name__ == "GatedLinear" and proj.kind == "gated" and proj.options.gain == 2.0
    assert PERankConfig.from_dict({"projector": "gated", "embedding_size": 4}).projector_options == {"gain": 1.0}


def test_config_json_is_written_by_one_module_only():
    """Every call that writes a file (atomic_json / write_text / json.dump / open(.., "w") ...) with a
    "config.json" literal in it, in the package and tools/: only perank_config.py may write one
    (weights/convert.py writes an HF decoder directory's, not a PE-Rank config)."""
    writers = {"atomic_json", "atomic_text", "atomic_write", "write_text", "write_bytes", "dump", "open"}
    found = set()
    for path in [*(ROOT / "perank_jax").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]:
        text = path.read_text()
        if "config.json" not in text and "CONFIG_FILE" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name not in writers:
                    continue
                seg = ast.unparse(node)
                if "'config.json'" in seg or "CONFIG_FILE" in seg:
                    found.add(path.relative_to(ROOT).as_posix())
        if "CONFIG_FILE = " in text:
            found.add(path.relative_to(ROOT).as_posix())
    assert found == {"perank_jax/weights/perank_config.py", "perank_jax/weights/convert.py"}, found
    assert "atomic_json(Path(directory) / CONFIG_FILE" in (ROOT / "perank_jax/weights/perank_config.py").read_text()


# --- a projector from outside the package, end to end -----------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("external")
    recs, _ = stage2_folder(d, 16)
    (d / "example.json").write_text(json.dumps({"query": recs[0]["messages_wo_content"][0]["content"].split(" :")[0],
                                                "texts": recs[0]["extra_texts"]}))
    return d


def stage2_args(files, out, *extra):
    return [f"model.decoder={files / 'dec'}", f"data.train={files / 'train.jsonl'}", f"data.embeddings={files / 'emb.npz'}",
            f"output_dir={out}", "data.buckets=[64]", "data.max_len=64", "optim.max_steps=3", "lora.rank=2",
            "model.projector=external_projector:GatedLinear", "model.projector_options={gain: 0.5}",
            "xla_options={xla_backend_optimization_level: 0}", *extra]


RANK_IN_FRESH_PROCESS = """
import json, sys
from perank_jax.inference.ranker import PERanker
from perank_jax.train.embeddings import table_embedder
class Table:
    encode = staticmethod(table_embedder(sys.argv[2]))
ex = json.load(open(sys.argv[3]))
ranker = PERanker.from_pretrained(sys.argv[1], encoder=Table())
print(json.dumps({"kind": ranker.projector.kind, "gain": ranker.projector.options.gain,
                  "order": ranker.rerank(ex["query"], ex["texts"])}))
"""


@pytest.mark.slow
def test_an_external_projector_trains_exports_and_ranks_in_a_fresh_process(files):
    """Selected by import path: 3 stage-2 steps on the (2,4) mesh equal 3 on one device; the export
    keeps its kind, options and generic weight keys; a fresh process loads the adapter and ranks."""
    import jax
    from perank_jax.train.config import load_train_config
    from perank_jax.train.loop import Run, fit
    from perank_jax.weights.io import SafetensorsFile
    done = fit(load_train_config("configs/tiny.stage2.yaml", stage2_args(files, files / "run", "mesh.shape=[2,4,1]")))
    on_mesh = done.state["params"]["projector"]
    assert len(on_mesh["w"].sharding.device_set) == 8
    run = Run(load_train_config("configs/tiny.stage2.yaml", stage2_args(files, files / "one")))
    state = run.trainer.init_state()
    for step in range(3):
        state, _ = run.trainer.step(state, run.batch(run.train_data, run.order.indices(step)))
    host = lambda t: jax.tree.map(lambda x: np.asarray(jax.device_get(x)), t)
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), host(on_mesh),
                                         host(state["params"]["projector"])))
    assert max(diffs) < 1e-5, diffs
    adapter = files / "run" / "adapter"
    conf = json.loads((adapter / "config.json").read_text())
    assert conf["projector"] == "external_projector:GatedLinear" and conf["projector_options"] == {"gain": 0.5}
    assert "projector_type" not in conf
    assert {"model.projector.w", "model.projector.gate"} <= set(SafetensorsFile(adapter / "adapter.safetensors").keys())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-c", RANK_IN_FRESH_PROCESS, str(adapter), str(files / "emb.npz"),
                          str(files / "example.json")], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kind"] == "external_projector:GatedLinear" and got["gain"] == 0.5
    assert sorted(got["order"]) == list(range(5)), got


def test_training_refuses_records_built_with_another_prompt_template(files, tmp_path, capsys):
    from perank_jax.cli import main
    from perank_jax.data.training_records import listwise_record
    recs, _ = stage2_records(16, seed=0)
    texts = recs[0]["extra_texts"]
    write_jsonl(tmp_path / "compact.jsonl", [listwise_record("topic t1", texts, range(5), template="compact")] * 8)
    code = main(["train", "configs/tiny.stage2.yaml", *stage2_args(files, tmp_path / "run"),
                 f"data.train={tmp_path / 'compact.jsonl'}"])
    one_line_error(capsys, code, "built with prompt template 'compact' but model.prompt_template is 'paper'")


@pytest.mark.parametrize("override,expect", [
    ("model.projector=no_such_kind", "unknown projector 'no_such_kind'; registered: film, identity, linear, mlp, multi_token"),
    ("model.projector=no_such_module.sub:Thing", "projector 'no_such_module.sub:Thing' does not import: "
                                                 "ModuleNotFoundError"),
    ("model.projector=external_projector:NotAProjector", "is <class 'external_projector.NotAProjector'>, "
                                                         "not a subclass of perank_jax.models.projector.Projector"),
    ("model.projector=external_projector:FlatOutput", "projector external_projector.FlatOutput returned shape "
                                                      "(2, 32) dtype float32 for 2 passages; expected shape (2, 1, 32)"),
    ("model.projector_options={depth: 0}", "model.projector_options (projector 'mlp'): depth must be in [1, 16], got 0"),
    ("model.query_scale=-2", "tiny.stage2.yaml: model.query_scale must be > 0 and <= 1e+06, got -2.0"),
])
def test_projector_and_config_errors_are_one_line_exit_2(files, tmp_path, capsys, override, expect):
    from perank_jax.cli import main
    args = [a for a in stage2_args(files, tmp_path / "run") if not a.startswith("model.projector")]
    extra = [] if override.startswith("model.projector=") else ["model.projector=mlp"]
    code = main(["train", "configs/tiny.stage2.yaml", *args, *extra, override])
    one_line_error(capsys, code, expect)


def test_a_checkpoint_config_with_a_bad_field_is_one_line_exit_2_at_rerank(tmp_path, capsys):
    from perank_jax.cli import main
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"model_type": "llama", "embedding_size": 8,
                                                             "projector": "mlp", "projector_options": {"depth": "2"}}))
    req = tmp_path / "req.jsonl"
    req.write_text(json.dumps({"query": {"text": "q", "qid": "1"},
                               "candidates": [{"docid": "d1", "doc": {"contents": "x"}, "score": 1.0}]}) + "\n")
    code = main(["rerank", "--model", str(tmp_path / "ck"), "--requests", str(req), "--out", str(tmp_path / "o.trec")])
    one_line_error(capsys, code, "projector_options (projector 'mlp'): depth must be an integer, got '2'")
