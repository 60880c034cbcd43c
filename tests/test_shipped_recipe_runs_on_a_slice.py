"""The shipped recipe end to end on a CI-sized slice: tools/build_training_data.py on a synthetic
mini data folder, then `perank train` with configs/smollm2-minilm.stage{1,2}.yaml VERBATIM except
for overrides that point them at the slice (data paths, output dirs, 2 steps, no mid-run
checkpoints), then the stage-2 adapter loaded by PERanker.from_pretrained and reranking.
Real weights: SmolLM2-135M-Instruct and all-MiniLM-L6-v2 from their pip packages (offline)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from perank_jax import cli
from perank_jax.evaluate.tables import load_config
from perank_jax.train.config import load_train_config
from helpers_tools import load_tool
from test_training_data_builder import build, make_mini_data

ROOT = Path(__file__).resolve().parent.parent
STAGE1 = ROOT / "configs" / "smollm2-minilm.stage1.yaml"
STAGE2 = ROOT / "configs" / "smollm2-minilm.stage2.yaml"


def test_every_recipe_and_tables_config_parses():
    recipes = sorted((ROOT / "configs").glob("smollm2-minilm*.yaml"))
    assert {p.name for p in recipes} >= {STAGE1.name, STAGE2.name}
    for p in recipes:
        cfg = load_train_config(p)
        assert cfg.model.decoder == "packaged:smollm2" and cfg.model.encoder == "packaged:minilm", p
    assert load_train_config(STAGE1).stage == 1
    s2 = load_train_config(STAGE2)
    assert s2.stage == 2 and s2.lora.rank > 0 and s2.data.embeddings and s2.model.projector_isometry
    tables = sorted((ROOT / "configs").glob("tables-*.yaml"))
    assert tables
    for p in tables:
        cfg = load_config(p)
        assert cfg.datasets and cfg.methods, p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    info = make_mini_data(tmp)
    data = tmp / "data_out"
    assert build(info, data, "--embed", "packaged:minilm", "--scifact-lists", "2", "--stage1-per-source", "4") == 0
    for f in ("stage1.jsonl", "stage2.jsonl", "stage2.emb.npz"):
        assert (data / f).is_file(), f
    common = ["optim.max_steps=2", "checkpoint.every=0", "progress=false"]
    s1, s2 = tmp / "s1", tmp / "s2"
    assert cli.main(["train", str(STAGE1), f"output_dir={s1}", f"data.train={data / 'stage1.jsonl'}", *common]) == 0
    assert cli.main(["train", str(STAGE2), f"output_dir={s2}", f"data.train={data / 'stage2.jsonl'}",
                     f"data.embeddings={data / 'stage2.emb.npz'}", *common]) == 0
    yield info, s1, s2
    shutil.rmtree(tmp, ignore_errors=True)      # stage 2 also exports a full merged checkpoint (~0.5 GB)


@pytest.mark.slow
def test_both_stages_train_two_steps_and_write_summary_metrics_and_exports(trained):
    _, s1, s2 = trained
    for out in (s1, s2):
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 2
        steps = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in steps if "loss" in r] == [1, 2]
    assert (s1 / "export" / "projector.safetensors").is_file()
    assert (s1 / "export" / "projector_config.json").is_file()


@pytest.mark.slow
def test_stage2_adapter_is_small_and_names_the_packaged_base_models(trained):
    _, _, s2 = trained
    adapter = s2 / "adapter"
    conf = json.loads((adapter / "config.json").read_text())
    assert conf["perank_format"] == "adapter"
    assert conf["base_decoder"] == "packaged:smollm2" and conf["encoder_name"] == "packaged:minilm"
    assert conf["prompt_template"] == "compact" and conf["query_token"] is True and conf["lora_rank"] == 8
    assert (adapter / "adapter.safetensors").is_file()
    size = sum(f.stat().st_size for f in adapter.rglob("*") if f.is_file())
    assert size < 10 * 2 ** 20, size


@pytest.mark.slow
def test_stage2_adapter_loads_and_reranks_into_a_permutation_in_both_modes(trained):
    from perank_jax import PERanker
    info, _, s2 = trained
    ranker = PERanker.from_pretrained(s2 / "adapter")
    query = info["queries"]["dl20"]["101"]
    passages = list(info["docs"]["dl20"].values())[:7]
    for mode in ("decode", "single_pass"):
        order = ranker.rerank(query, passages, mode=mode)
        assert sorted(order) == list(range(len(passages))), (mode, order)


def ship(*args) -> int:
    return load_tool("ship_adapter").main([str(a) for a in args])


@pytest.mark.slow
def test_ship_adapter_ships_the_run_with_its_inference_settings_and_example_rankings(trained, tmp_path):
    from perank_jax import PERanker
    from perank_jax.cli import EXAMPLE_SET
    from perank_jax.data.trec import read_requests
    _, _, s2 = trained
    dest = tmp_path / "shipped"
    assert ship(s2, "--query-scale", 3000, "--query-feedback", 1, 0.01, "--dest", dest) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["adapter.safetensors", "config.json", "example_rankings.json",
                                                      "training_loss.png", "training_metrics.jsonl"]
    assert not list(tmp_path.glob(".ship-*"))                           # the staging folder is gone
    conf = json.loads((dest / "config.json").read_text())
    assert conf["query_scale"] == 3000 and conf["query_feedback_weight"] == 1 and conf["query_feedback_temperature"] == 0.01
    assert (dest / "adapter.safetensors").read_bytes() == (s2 / "adapter" / "adapter.safetensors").read_bytes()
    recorded = json.loads((dest / "example_rankings.json").read_text())
    reqs = read_requests(EXAMPLE_SET)
    assert set(recorded) == {r.qid for r in reqs}
    ranker = PERanker.from_pretrained(dest)
    assert ranker.query_scale == 3000 and ranker.feedback == (1.0, 0.01)
    for r in reqs:                                 # what was recorded is what the shipped folder ranks
        order = ranker.rerank(r.query, [c.text for c in r.candidates], mode=ranker.config["default_mode"])
        assert recorded[r.qid] == [r.candidates[i].docid for i in order]


@pytest.mark.slow
def test_ship_adapter_leaves_the_destination_untouched_when_the_run_is_broken(trained, tmp_path, capsys):
    _, _, s2 = trained
    dest = tmp_path / "shipped"
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    broken = tmp_path / "run"
    shutil.copytree(s2 / "adapter", broken / "adapter")
    for f in ("metrics.jsonl", "metrics.png"):
        shutil.copyfile(s2 / f, broken / f)
    assert ship(tmp_path / "missing-run", "--dest", dest) == 2
    assert "not found" in capsys.readouterr().err
    (broken / "adapter" / "adapter.safetensors").write_bytes(b"not a safetensors file")
    assert ship(broken, "--dest", dest) == 2
    err = capsys.readouterr().err
    assert "does not load and rank" in err and "was not changed" in err and "Traceback" not in err
    assert [p.name for p in dest.iterdir()] == ["config.json"] and (dest / "config.json").read_text() == "{}"
    assert not list(tmp_path.glob(".ship-*"))
