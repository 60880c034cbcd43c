"""Each shipped reranker reranks only from an embedding cache its own encoder made: a cache made by
the other packaged encoder (all-MiniLM-L6-v2 for the mpnet model, all-mpnet-base-v2 for the MiniLM
one) is refused in one line at the CLI (exit 2), naming the cache, the dimension and the encoder,
before any ranking is written. (That the cache `perank encode --model M` makes is accepted by M:
tests/test_encode_cache_fits_its_model.py.)"""
from __future__ import annotations

import pytest

from helpers_cli import one_line_error
from perank_jax.cli import main
from perank_jax.weights.packaged import SHIPPED_RERANKERS, shipped_dir
from perank_jax.weights.perank_config import PERankConfig

pytestmark = pytest.mark.slow
OTHER = {"packaged:minilm": "packaged:mpnet", "packaged:mpnet": "packaged:minilm"}


def corpus(d):
    (d / "docs.tsv").write_text("d1\tcats are small felines kept as pets\nd2\tdogs bark at the mail carrier\n"
                                "d3\triver banks flood in spring\nd4\tbanks lend money to companies\n")
    (d / "queries.tsv").write_text("q1\tpet cats\n")
    (d / "run.trec").write_text("".join(f"q1 Q0 d{i} {i} {5 - i} bm25\n" for i in range(1, 5)))


def rerank(d, model, cache):
    return main(["rerank", "--model", model, "--embeddings", str(cache), "--run", str(d / "run.trec"),
                 "--corpus", str(d / "docs.tsv"), "--queries", str(d / "queries.tsv"), "--out", str(d / "out.trec")])


@pytest.mark.parametrize("name", sorted(SHIPPED_RERANKERS))
def test_a_cache_made_by_the_other_packaged_encoder_is_refused_in_one_line(tmp_path, capsys, name):
    corpus(tmp_path)
    model = f"packaged:{name}"
    other = OTHER[PERankConfig.read(shipped_dir(name)).encoder_name]
    assert main(["encode", "--encoder", other, "--max-length", "256", "--corpus", str(tmp_path / "docs.tsv"),
                 "--out", str(tmp_path / "other"), "--quiet"]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, rerank(tmp_path, model, tmp_path / "other"), str(tmp_path / "other"))
    assert str(tmp_path / "other") in err and "dimension" in err and "made by encoder" in err, err
    assert not (tmp_path / "out.trec").exists()

