"""`perank tables` end to end on tiny random models: the tables have the right rows and columns,
and the accounting is consistent (processed tokens = prompt lengths summed over windows,
generated tokens = decode steps)."""
import json

import pytest
import yaml

from perank_jax.cli import main
from perank_jax.data.trec_write import write_qrels, write_run

QUERIES = {"q1": "which document mentions apples", "q2": "find the pear facts", "q3": "plums"}
N = 25  # candidates per query: windows (5, 25) and (0, 15) at depth 25; one window at depth 10
MAX_NEW = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables_data")
    # every passage has the same shape so a window's prompt length does not depend on its order
    corpus = {f"d{i}": f"document {i} mentions {'apples' if i % 3 else 'pears'}" for i in range(10, 10 + N)}
    (d / "corpus.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in corpus.items()))
    (d / "queries.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in QUERIES.items()))
    docs = list(corpus)
    write_run({q: docs[j:] + docs[:j] for j, q in enumerate(QUERIES)}, d / "run.trec")
    write_qrels({"q1": {"d12": 2, "d30": 1}, "q2": {"d15": 1}, "q3": {"d33": 1, "d10": 0}}, d / "qrels.txt")
    return d


def _config(d, out, tiny_perank_dir, tiny_mistral_dir, minilm_dir):
    return {
        "datasets": [{"name": "tiny", "queries": str(d / "queries.tsv"), "run": str(d / "run.trec"),
                      "corpus": str(d / "corpus.tsv"), "qrels": str(d / "qrels.txt")}],
        "methods": [
            {"name": "BM25", "kind": "first_stage"},
            {"name": "MiniLM cosine", "kind": "embedding", "encoder": str(minilm_dir)},
            {"name": "text-listwise", "kind": "textlist", "decoder": str(tiny_mistral_dir),
             "max_new_tokens": MAX_NEW},
            {"name": "PE-Rank", "kind": "perank", "checkpoint": str(tiny_perank_dir), "encoder": str(minilm_dir)},
        ],
        "depth": N, "efficiency_depths": [10, N], "window": 20, "stride": 10, "out_dir": str(out),
    }


def test_tables_rows_columns_and_consistent_accounting(dataset, tmp_path, tiny_perank_dir, tiny_mistral_dir,
                                                       minilm_dir, monkeypatch, capsys):
    import perank_jax.inference.generate as generate
    from transformers import AutoTokenizer
    from perank_jax.evaluate.metrics import evaluate
    from perank_jax.data.trec import read_qrels, read_run
    from perank_jax.evaluate.textlist import textlist_messages
    from perank_jax.listwise.prompts import add_special_tokens, embedding_prompt

    calls = []  # every greedy generation of the text-listwise baseline: (prompt length, generated)
    real = generate.greedy_generate

    def recording(graphdef, state, prompts, *a, **kw):
        out, n = real(graphdef, state, prompts, *a, **kw)
        calls.append((len(prompts[0]), int(n[0])))
        return out, n
    monkeypatch.setattr(generate, "greedy_generate", recording)

    cfg_path = tmp_path / "tables.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(dataset, tmp_path / "out", tiny_perank_dir, tiny_mistral_dir,
                                               minilm_dir)))
    assert main(["tables", str(cfg_path)]) == 0
    printed = capsys.readouterr().out
    res = json.loads((tmp_path / "out" / "tables.json").read_text())
    assert (tmp_path / "out" / "latency_vs_candidates.png").stat().st_size > 1000
    assert "Table 2" in printed and "Table 3" in printed

    methods = ["BM25", "MiniLM cosine", "text-listwise", "PE-Rank"]
    t2 = res["table2"].splitlines()
    assert t2[2] == "| Method | tiny (3 q) | Avg |"
    assert [row.split(" | ")[0][2:] for row in t2[4:]] == methods
    t3 = res["table3"].splitlines()
    assert t3[2] == ("| Method | top-10 latency (s) | top-10 processed tok | top-10 generated tok | top-25 latency (s) "
                     "| top-25 processed tok | top-25 generated tok |")
    assert [row.split(" | ")[0][2:] for row in t3[4:4 + len(methods)]] == methods

    # first stage: Table 2 equals evaluating the input run; no LLM cost
    first = evaluate(read_qrels(dataset / "qrels.txt"), read_run(dataset / "run.trec"), ["nDCG@10"])
    assert res["quality"]["BM25"]["tiny"] == pytest.approx(first.aggregate["nDCG@10"])
    for m in ("BM25", "MiniLM cosine"):
        assert res["efficiency"][m][str(N)]["processed_tokens"] == 0

    # PE-Rank: prompt lengths of the windows (20 then 15 placeholders); one decode step per passage
    tok = AutoTokenizer.from_pretrained(str(tiny_perank_dir))
    add_special_tokens(tok)
    plen = lambda q, n: len(tok(tok.apply_chat_template([{"role": "user", "content": embedding_prompt(q, n)}],
                                                        add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False)["input_ids"])
    costs = res["per_query_costs"][f"tiny/PE-Rank/top{N}"]
    for c, q in zip(costs, QUERIES):
        assert c["windows"] == 2
        assert c["processed_tokens"] == plen(QUERIES[q], 20) + plen(QUERIES[q], 15)
        assert c["generated_tokens"] == 20 + 15
    assert res["efficiency"]["PE-Rank"]["10"]["generated_tokens"] == 10

    # text-listwise: the tokens reported are the prompts fed and the steps generated
    ttok = AutoTokenizer.from_pretrained(str(tiny_mistral_dir))
    tlen = lambda q, n: len(ttok(ttok.apply_chat_template(
        textlist_messages(q, [f"document {10 + i} mentions apples" for i in range(n)]),
        add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"])
    tcosts = res["per_query_costs"][f"tiny/text-listwise/top{N}"]
    assert len(calls) == 2 * (1 + 3) + 1 * (1 + 3)  # depth 25: warm-up + 3 queries; depth 10 likewise
    for i, (c, q) in enumerate(zip(tcosts, QUERIES)):
        window_calls = calls[2 + 2 * i: 4 + 2 * i]  # calls[0:2]: the warm-up query's two windows
        assert c["processed_tokens"] == sum(p for p, _ in window_calls) == tlen(QUERIES[q], 20) + tlen(QUERIES[q], 15)
        assert c["generated_tokens"] == sum(g for _, g in window_calls)
        assert 2 <= c["generated_tokens"] <= 2 * MAX_NEW


def test_bad_tables_config_is_one_clear_error(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"datasets": [{"name": "x", "qrels": "q.txt", "requests": "r.jsonl"}],
                                 "methods": [{"name": "m", "kind": "textlist"}]}))
    assert main(["tables", str(p)]) == 2
    assert "kind textlist needs `decoder`" in capsys.readouterr().err
    p.write_text(yaml.safe_dump({"datasets": [], "methods": [], "depht": 3}))
    assert main(["tables", str(p)]) == 2
    assert "unknown key(s) ['depht']" in capsys.readouterr().err
    p.write_text(yaml.safe_dump({"datasets": [{"name": "x", "qrels": "q.txt", "requests": "r.jsonl"}],
                                 "methods": [{"name": "cos", "kind": "embedding", "encoder": "e", "query_scale": 3}]}))
    assert main(["tables", str(p)]) == 2
    assert "methods[0] (cos): query_scale needs kind perank with a `checkpoint`" in capsys.readouterr().err
    p.write_text(yaml.safe_dump({"datasets": [{"name": "x", "qrels": "q.txt", "requests": "r.jsonl"}],
                                 "methods": [{"name": "pe", "kind": "perank", "checkpoint": "c", "query_scale": 0}]}))
    assert main(["tables", str(p)]) == 2
    assert f"{p}: methods[0].query_scale must be > 0 and <= 1e+06, got 0.0" in capsys.readouterr().err
    p.write_text(yaml.safe_dump({"datasets": [{"name": "x", "qrels": "q.txt", "requests": "r.jsonl"}],
                                 "methods": [{"name": "pe", "kind": "perank", "decoder": "d", "encoder": "e",
                                              "projector": "mlp", "projector_options": {"depth": 99}}]}))
    assert main(["tables", str(p)]) == 2
    assert "methods[0] (pe): projector_options (projector 'mlp'): depth must be in [1, 16]" in \
        capsys.readouterr().err


def test_a_query_scale_needs_a_checkpoint_with_a_query_token(tiny_perank_dir):
    from perank_jax.inference.ranker import PERanker
    with pytest.raises(ValueError, match="applies only to a checkpoint with a query token"):
        PERanker.from_pretrained(tiny_perank_dir, query_scale=100)


def test_a_dataset_embedding_cache_serves_table2_without_changing_any_ranking(dataset, tmp_path, tiny_perank_dir,
                                                                              minilm_dir, monkeypatch, capsys):
    """With `embeddings:` the PE-Rank and cosine methods read passage vectors from the cache (only
    the queries are encoded) and every run equals the one encoded on the fly; a cache another
    encoder setting made (max_length 64) is not used, said once per method, and changes nothing; with
    a list of caches (one per encoder) each method takes the one its encoder made."""
    from perank_jax.data.embcache_build import build_embedding_cache
    from perank_jax.models.dense import DenseEncoder

    encoded = []
    real = DenseEncoder.encode
    monkeypatch.setattr(DenseEncoder, "encode", lambda self, texts, *a, **k: (encoded.extend(texts),
                                                                              real(self, texts, *a, **k))[1])
    good = build_embedding_cache(str(minilm_dir), dataset / "corpus.tsv", tmp_path / "cache", progress=False)
    other = build_embedding_cache(str(minilm_dir), dataset / "corpus.tsv", tmp_path / "cache64", max_length=64,
                                  progress=False)
    methods = [{"name": "MiniLM cosine", "kind": "embedding", "encoder": str(minilm_dir)},
               {"name": "PE-Rank", "kind": "perank", "checkpoint": str(tiny_perank_dir), "encoder": str(minilm_dir)},
               {"name": "PE-Rank single pass", "kind": "perank", "checkpoint": str(tiny_perank_dir),
                "encoder": str(minilm_dir), "mode": "single_pass"}]
    runs, logs = {}, {}
    for label, cache in (("fly", None), ("cache", good), ("other", other), ("both", [other, good])):
        d = {"name": "tiny", "queries": str(dataset / "queries.tsv"), "run": str(dataset / "run.trec"),
             "corpus": str(dataset / "corpus.tsv"), "qrels": str(dataset / "qrels.txt"), "title_format": True}
        if cache:
            d["embeddings"] = [str(c) for c in cache] if isinstance(cache, list) else str(cache)
        cfg = {"datasets": [d], "methods": methods, "depth": N, "efficiency_depths": [], "window": 20,
               "stride": 10, "warmup": False, "batch_queries": 2, "out_dir": str(tmp_path / label)}
        (tmp_path / f"{label}.yaml").write_text(yaml.safe_dump(cfg))
        encoded.clear()
        assert main(["tables", str(tmp_path / f"{label}.yaml")]) == 0
        logs[label] = capsys.readouterr().err
        runs[label] = {p.name: p.read_text() for p in (tmp_path / label / "runs").iterdir()}
        if label in ("cache", "both"):
            assert set(encoded) <= set(QUERIES.values()), "a passage was encoded although the cache holds it"
        else:
            assert len(set(encoded) - set(QUERIES.values())) == N
    assert len(runs["fly"]) == 3 and runs["cache"] == runs["fly"] == runs["other"] == runs["both"]
    assert "not from a cache" not in logs["cache"] + logs["both"]
    for m in ("MiniLM cosine", "PE-Rank", "PE-Rank single pass"):
        assert logs["other"].count(f"[tables] {m}: encodes on the fly, not from a cache") == 1


def test_a_cache_encoded_in_another_title_format_is_refused_by_tables(dataset, tmp_path, minilm_dir, capsys):
    from perank_jax.data.embcache_build import build_embedding_cache
    cache = build_embedding_cache(str(minilm_dir), dataset / "corpus.tsv", tmp_path / "cache", max_length=32,
                                  progress=False)
    cfg = {"datasets": [{"name": "tiny", "queries": str(dataset / "queries.tsv"), "run": str(dataset / "run.trec"),
                         "corpus": str(dataset / "corpus.tsv"), "qrels": str(dataset / "qrels.txt"),
                         "embeddings": str(cache)}],
           "methods": [{"name": "BM25", "kind": "first_stage"}], "efficiency_depths": [], "out_dir": str(tmp_path)}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["tables", str(tmp_path / "t.yaml")]) == 2
    err = capsys.readouterr().err
    assert "encoded with BEIR titles" in err and "title_format: true" in err and "Traceback" not in err


def test_methods_with_different_encoders_never_share_passage_vectors(dataset, tmp_path, tiny_perank_dir,
                                                                       minilm_dir, tmp_path_factory):
    """Table 2 remembers each passage's vector per dataset, so the PE-Rank modes encode it once;
    a method whose encoder differs (here a random 384-d BERT instead of MiniLM, same dimension)
    must get its own vectors: every run in one table equals the run of that method alone."""
    from fixtures import tiny_encoder_dir
    other_encoder = tiny_encoder_dir(tmp_path_factory.mktemp("random384"), hidden=384, seed=3)
    methods = [{"name": "PE-Rank MiniLM", "kind": "perank", "checkpoint": str(tiny_perank_dir),
                "encoder": str(minilm_dir), "mode": "single_pass"},
               {"name": "PE-Rank random", "kind": "perank", "checkpoint": str(tiny_perank_dir),
                "encoder": str(other_encoder), "mode": "single_pass"},
               {"name": "cosine random", "kind": "embedding", "encoder": str(other_encoder)}]
    d = {"name": "tiny", "queries": str(dataset / "queries.tsv"), "run": str(dataset / "run.trec"),
         "corpus": str(dataset / "corpus.tsv"), "qrels": str(dataset / "qrels.txt")}

    def runs(label, ms):
        cfg = {"datasets": [d], "methods": ms, "depth": N, "efficiency_depths": [], "window": 20, "stride": 10,
               "warmup": False, "out_dir": str(tmp_path / label)}
        (tmp_path / f"{label}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["tables", str(tmp_path / f"{label}.yaml")]) == 0
        return {p.name: p.read_text() for p in (tmp_path / label / "runs").iterdir()}

    together = runs("together", methods)
    alone = {}
    for i, m in enumerate(methods):
        alone.update(runs(f"alone{i}", [m]))
    assert len(together) == 3 and together == alone
    a, b = (together[f"tiny.{m}.top{N}.trec"] for m in ("PE-Rank MiniLM", "PE-Rank random"))
    assert a != b, "the two encoders rank alike; the test cannot tell shared vectors from separate ones"
