"""The mpnet variant of the shipped recipe end to end on a CI-sized slice: the model card's commands
(`tools/build_training_data.py ... --embed packaged:mpnet`, then `perank train
configs/smollm2-mpnet.stage2.yaml`) VERBATIM except for overrides that point them at the slice, then
the adapter loaded by PERanker.from_pretrained with all-mpnet-base-v2 (768-d) and reranking.
Real weights: SmolLM2-135M-Instruct and all-mpnet-base-v2 from their pip packages (offline)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from perank_jax import cli
from perank_jax.train.config import load_train_config
from test_training_data_builder import build, make_mini_data

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "smollm2-mpnet.stage2.yaml"
pytestmark = pytest.mark.slow


def recipe_commands() -> list[str]:
    """The commands the recipe's header gives (the model card repeats them)."""
    return [ln.strip("# ").strip() for ln in RECIPE.read_text().splitlines()
            if re.match(r"#\s+(python tools/|perank )", ln)]


def test_the_recipe_names_mpnet_and_the_same_training_as_the_minilm_one():
    mp, mini = load_train_config(RECIPE), load_train_config(ROOT / "configs" / "smollm2-minilm.stage2.yaml")
    assert mp.model.encoder == "packaged:mpnet" and mini.model.encoder == "packaged:minilm"
    assert (mp.lora, mp.optim, mp.loss, mp.global_batch, mp.seed) == (mini.lora, mini.optim, mini.loss,
                                                                      mini.global_batch, mini.seed)
    cmds = recipe_commands()
    assert any("--embed packaged:mpnet" in c for c in cmds) and f"perank train configs/{RECIPE.name}" in cmds


def test_the_recipe_builds_mpnet_vectors_trains_and_the_adapter_ranks(tmp_path):
    from perank_jax import PERanker
    info = make_mini_data(tmp_path)
    data = tmp_path / "data_out"
    build_cmd = next(c for c in recipe_commands() if c.startswith("python tools/build_training_data.py")).split()
    extra = build_cmd[build_cmd.index("--embed"):]                   # the recipe's own encoder flag
    assert build(info, data, *extra, "--scifact-lists", "2", "--stage1-per-source", "4") == 0
    vectors = np.load(data / "stage2.emb.npz")
    assert vectors["vectors"].shape[-1] == 768                  # all-mpnet-base-v2's dimension
    out = tmp_path / "s2"
    assert cli.main(["train", str(RECIPE), f"output_dir={out}", f"data.train={data / 'stage2.jsonl'}",
                     f"data.embeddings={data / 'stage2.emb.npz'}", "optim.max_steps=2", "checkpoint.every=0",
                     "progress=false"]) == 0
    conf = json.loads((out / "adapter" / "config.json").read_text())
    assert conf["encoder_name"] == "packaged:mpnet" and conf["embedding_size"] == 768
    assert sum(f.stat().st_size for f in (out / "adapter").iterdir()) < 10 * 2 ** 20
    ranker = PERanker.from_pretrained(out / "adapter")
    assert ranker.encoder.dim == 768
    passages = list(info["docs"]["dl20"].values())[:7]
    order = ranker.rerank(info["queries"]["dl20"]["101"], passages, mode="single_pass")
    assert sorted(order) == list(range(len(passages)))
    shutil.rmtree(out, ignore_errors=True)
