"""`perank encode` makes a cache its model's reranking accepts with no setting given: the README's
fast-path commands run literally (default: the shipped model), and with `--model CKPT` added for any
checkpoint; the model's settings cannot be overridden by mistake (one line, exit 2)."""
import json
import re
import shlex
from pathlib import Path

import pytest

from perank_jax.cli import main
from perank_jax.data.embcache import load_embedding_cache
from perank_jax.data.trec import read_run
from perank_jax.weights.perank_config import PERankConfig

ROOT = Path(__file__).resolve().parents[1]
TOPICS = "cats dogs rivers banks loans trees music pianos courts cities fish birds".split()


def readme_fast_path() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- ci:fastpath -->\s*```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


def corpus_in(d: Path) -> None:
    (d / "docs.tsv").write_text("".join(f"d{i}\tdocument {i} is about {w} and {TOPICS[(i * 5) % 12]}\n"
                                        for i, w in enumerate(TOPICS * 2)))
    (d / "queries.tsv").write_text("q1\tcats and dogs\nq2\tmoney in river banks\n")


def run_readme(d: Path, monkeypatch, extra: dict[str, list[str]]) -> None:
    monkeypatch.chdir(d)
    for cmd in readme_fast_path():
        assert cmd[0] == "perank"
        assert main(cmd[1:] + extra.get(cmd[1], [])) == 0, cmd


@pytest.mark.parametrize("model", ["shipped", "checkpoint"])
def test_readme_fast_path_encodes_as_the_model_and_reranks_from_the_cache(tmp_path, monkeypatch, capsys, model,
                                                                          tiny_perank_dir_32):
    corpus_in(tmp_path)
    extra = {} if model == "shipped" else {c: ["--model", str(tiny_perank_dir_32)] for c in ("encode", "rerank")}
    run_readme(tmp_path, monkeypatch, extra)
    assert ", 0 encoded on the fly" in capsys.readouterr().out
    ranked = read_run(tmp_path / "reranked.trec")
    assert sorted(ranked) == ["q1", "q2"]
    first = read_run(tmp_path / "bm25.trec")
    assert all(sorted(h.docid for h in ranked[q]) == sorted(h.docid for h in first[q]) for q in ranked)
    meta = load_embedding_cache(tmp_path / "cache").metadata
    from perank_jax.weights.packaged import shipped_dir
    conf = PERankConfig.read(shipped_dir() if model == "shipped" else tiny_perank_dir_32)
    want = conf.encoder_settings()
    assert meta["max_length"] == want["max_length"] and meta["dtype"] == want["dtype"]
    if model == "shipped":
        assert meta["max_length"] == 256 != 512         # the shipped model's, not the plain-encoder default
    stats = [json.loads(line) for line in (tmp_path / "reranked.trec.stats.jsonl").read_text().splitlines()]
    assert [s["encoded_on_the_fly"] for s in stats] == [0, 0]
    assert [s["from_cache"] for s in stats] == [len(first["q1"]), len(first["q2"])]


@pytest.mark.parametrize("flag", [["--max-length", "512"], ["--pooling", "cls"], ["--no-normalize"],
                                  ["--dtype", "bfloat16"]])
def test_a_setting_the_model_fixes_is_refused_in_one_line_before_any_work(tmp_path, capsys, flag):
    corpus_in(tmp_path)
    rc = main(["encode", "--corpus", str(tmp_path / "docs.tsv"), "--out", str(tmp_path / "cache"), *flag])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and flag[0] in err and "set by the model" in err
    assert not (tmp_path / "cache").exists()
