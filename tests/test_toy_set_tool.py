"""tools/make_toy_set.py writes the tutorial's offline toy set: disjoint train / test queries of the
packaged example set with their runs and judgements, and a decoder directory whose tokenizer covers
every word the prompts hold; it refuses bad flags in one line and never replaces a folder of
someone else's files."""
from __future__ import annotations

import json

import pytest
from helpers_tools import load_tool

from perank_jax.data.trec import read_corpus, read_qrels, read_queries, read_requests, read_run

tool = load_tool("make_toy_set")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return tool.write_toy_set(tmp_path_factory.mktemp("toy") / "toy", train_queries=4, hidden=32)


def test_the_toy_set_splits_the_example_queries_and_judges_only_its_passages(toy):
    train, test = read_queries(toy / "train.queries.tsv"), read_queries(toy / "test.queries.tsv")
    examples = [json.loads(line) for line in tool.EXAMPLES.read_text().splitlines()]
    assert list(train) + list(test) == [e["qid"] for e in examples] and len(train) == 4
    corpus, qrels = read_corpus(toy / "corpus.tsv"), read_qrels(toy / "qrels.txt")
    for part, queries in (("train", train), ("test", test)):
        run = read_run(toy / f"{part}.run")
        assert set(run) == set(queries) and all(len(hits) == 20 for hits in run.values())
    assert {d for judged in qrels.values() for d in judged} <= set(corpus)
    assert sum(len(j) for j in qrels.values()) == sum(c.get("relevant") is True for e in examples
                                                       for c in e["candidates"])


def test_the_toy_decoders_tokenizer_covers_every_word_of_the_set(toy):
    from perank_jax.weights.decoder import load_tokenizer
    tok = load_tokenizer(toy / "decoder")
    conf = json.loads((toy / "decoder" / "config.json").read_text())
    assert conf["vocab_size"] == len(tok) and conf["hidden_size"] == 32
    texts = tool.prompt_texts(read_requests(tool.EXAMPLES))
    unk = tok.convert_tokens_to_ids("<unk>")
    assert all(unk not in tok(t, add_special_tokens=False)["input_ids"] for t in texts)


def test_a_folder_of_other_files_is_refused_untouched_and_bad_flags_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "notes.txt").write_text("mine")
    assert tool.main([str(tmp_path / "toy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'toy'}: exists and holds files") and "notes.txt" in err
    assert [p.name for p in (tmp_path / "toy").iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]                  # no temp left behind
    assert tool.main([str(tmp_path / "new"), "--train-queries", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --train-queries must be in [1, 5] (the example set has 6 queries), got 6"
    assert not (tmp_path / "new").exists()
