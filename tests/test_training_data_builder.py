"""tools/build_training_data.py on a synthetic mini data folder (the layout `perank data fetch` prepares,
made-up texts, so CI needs no real data): what the stage-1/stage-2 files hold, and one clear
`error: file:line: ...` (exit 2, nothing written) for each kind of bad source."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from perank_jax.listwise import prompts

from helpers_tools import load_tool

builder = load_tool("build_training_data")

# ------------------------------------------------------------------ the synthetic mini folder
_SUBJECTS = ["the river", "a small village", "the old library", "our school garden", "the city council",
             "a young fox", "the mountain trail", "the local bakery", "a quiet harbor", "the science museum",
             "an early train", "the winter market", "a tall lighthouse", "the farm cooperative", "a desert road"]
_VERBS = ["opened", "welcomed", "repaired", "described", "followed", "protected", "measured", "painted",
          "visited", "planned", "celebrated", "recorded"]
_OBJECTS = ["new wooden benches", "a long stone bridge", "the spring festival", "several rare birds",
            "fresh bread every morning", "the northern lights", "a map of the coast", "two hundred visitors",
            "the flooded fields", "an evening concert", "the broken clock tower", "warm blankets for families"]
_TAILS = ["after a rainy week", "before the summer holidays", "with help from neighbours", "for the first time",
          "despite the cold wind", "during the long weekend", "as the sun went down", "in the early morning"]

DL20_QUERIES = {"101": "how do honey bees find flowers", "102": "why is sea water salty",
                "103": "what causes thunder in a storm", "104": "how long can oak trees live"}
DL22_QUERIES = {"2001": "best way to store fresh basil", "2002": "who invented the paper clip",
                "2003": "how far can owls see at night"}
SCIFACT_QUERIES = {"0": "vitamin d lowers the risk of fractures", "7": "sleep loss impairs memory in adults",
                   "12": "coffee intake raises blood pressure"}
SPLIT = {"train": ["101", "103"], "heldout": ["102", "104"]}
RUN_DEPTH = 25


def _texts(rng: random.Random, k: int, seen: set) -> list[str]:
    out = []
    while len(out) < k:
        t = (f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
             f"{rng.choice(_TAILS)}, and {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}.")
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _write_run(path: Path, run: dict[str, list[str]], tag: str, rng: random.Random) -> dict:
    """TREC run with scores decreasing by rank; lines shuffled within the file (the reader orders
    them by score). Returns {(qid, docid): 1-based file line}."""
    rows = [(q, d, r) for q, docs in run.items() for r, d in enumerate(docs, 1)]
    rng.shuffle(rows)
    path.write_text("".join(f"{q} Q0 {d} {r} {30.0 - 0.5 * r:.4f} {tag}\n" for q, d, r in rows))
    return {(q, d): i for i, (q, d, _) in enumerate(rows, 1)}


def make_mini_data(root: Path, seed: int = 0) -> dict:
    """Write a mini data folder (dl20, dl22, scifact, wiki) under root/data and a DL20 split at
    root/split.json. Returns what the tests need to know about it (texts, runs in rank order,
    grades, the file line of each run entry)."""
    rng = random.Random(seed)
    data = root / "data"
    seen: set = set()
    info = {"data": data, "split": root / "split.json", "split_ids": SPLIT, "lines": {}, "runs": {},
            "docs": {}, "queries": {"dl20": DL20_QUERIES, "dl22": DL22_QUERIES, "scifact": SCIFACT_QUERIES}}
    for name, queries, prefix, bm_file, sp_file in [
            ("dl20", DL20_QUERIES, "", "run.bm25.top100.txt", "run.splade_pp_ed.top100.txt"),
            ("dl22", DL22_QUERIES, "msmarco_passage_00_", "run.bm25.txt", "run.splade_pp_ed.txt")]:
        d = data / name
        d.mkdir(parents=True)
        ids = [f"{prefix}{7000 + 13 * i}" for i in range(30)]
        docs = dict(zip(ids, _texts(rng, len(ids), seen)))
        info["docs"][name] = docs
        (d / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in queries.items()))
        (d / "docs.tsv").write_text("".join(f"{i}\t{t}\n" for i, t in docs.items()))
        bm25 = {q: rng.sample(ids, RUN_DEPTH) for q in queries}
        splade = {q: rng.sample(ids, RUN_DEPTH) for q in queries}
        info["runs"][name] = {"bm25": bm25, "splade": splade}
        info["lines"][(name, "bm25")] = _write_run(d / bm_file, bm25, "bm25", rng)
        _write_run(d / sp_file, splade, "splade", rng)
        if name == "dl20":
            grades = {}
            for q, docs_q in bm25.items():
                judged = rng.sample(docs_q, 8) + [d_ for d_ in ids if d_ not in docs_q][:2]
                grades[q] = {d_: rng.choice([0, 0, 1, 2, 3]) for d_ in judged}
                grades[q][judged[0]] = 3                       # every query has a relevant document
            info["grades"] = grades
            (d / "qrels.txt").write_text("".join(f"{q} 0 {d_} {g}\n" for q, j in grades.items() for d_, g in j.items()))
    # scifact: BEIR corpus, train queries, qrels, BM25 run over all 10 docs
    d = data / "scifact"
    d.mkdir()
    sci_ids = [str(4983 + 101 * i) for i in range(10)]
    titles = _texts(rng, 10, seen)
    bodies = _texts(rng, 10, seen)
    info["docs"]["scifact"] = {i: " ".join(f"Title: {t} Content: {b}".split()) for i, t, b in zip(sci_ids, titles, bodies)}
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": b}) + "\n"
                                            for i, t, b in zip(sci_ids, titles, bodies)))
    (d / "queries.train.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in SCIFACT_QUERIES.items()))
    sci_run = {q: rng.sample(sci_ids, 10) for q in SCIFACT_QUERIES}
    sci_qrels = {q: {sci_run[q][rng.randrange(10)]: 1} for q in SCIFACT_QUERIES}
    info["runs"]["scifact"] = {"bm25": sci_run}
    info["sci_qrels"] = sci_qrels
    (d / "qrels.train.txt").write_text("".join(f"{q} 0 {x} {g}\n" for q, j in sci_qrels.items() for x, g in j.items()))
    _write_run(d / "run.bm25.train.top100.txt", sci_run, "bm25s", rng)
    # wiki: DPR-style passages, title on the first line
    d = data / "wiki"
    d.mkdir()
    wiki = _texts(rng, 10, seen)
    (d / "passages.jsonl").write_text("".join(json.dumps({"id": str(i), "contents": f"Topic {i}\n{t}"}) + "\n"
                                              for i, t in enumerate(wiki)))
    info["docs"]["wiki"] = {str(i): f"Topic {i} {t}" for i, t in enumerate(wiki)}
    info["split"].write_text(json.dumps(SPLIT))
    all_text = "\n".join(t for docs in info["docs"].values() for t in docs.values())
    for qs in info["queries"].values():
        assert not any(q in all_text for q in qs.values()), "a query text must not occur inside a passage"
    return info


def build(info: dict, out: Path, *extra: str) -> int:
    return builder.main(["--data", str(info["data"]), "--out", str(out), "--split", str(info["split"]), *extra])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


# ------------------------------------------------------------------ what the files hold
N, POOL, LISTS, WINDOWS = 8, 15, 4, 2
ARGS = ("-n", str(N), "--pool", str(POOL), "--lists-per-query", str(LISTS), "--windows-per-query", str(WINDOWS),
        "--scifact-lists", "2", "--stage1-per-source", "5")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    info = make_mini_data(root)
    assert build(info, root / "out", *ARGS) == 0
    return info, root / "out"


def _who(info):
    """query text -> (set, qid); passage text -> (set, docid)."""
    q = {t: (s, qid) for s, qs in info["queries"].items() for qid, t in qs.items()}
    d = {t: (s, did) for s, docs in info["docs"].items() for did, t in docs.items()}
    return q, d


def test_stage2_has_dl22_and_dl20_train_lists_only_never_a_heldout_query(built):
    info, out = built
    recs = read_jsonl(out / "stage2.jsonl")
    qwho, _ = _who(info)
    sets = [qwho[r["query_text"]] for r in recs]
    assert [s for s, _ in sets] == ["dl22"] * 3 * LISTS + ["dl20"] * 2 * LISTS + ["scifact"] * 2
    assert {q for s, q in sets if s == "dl20"} == set(SPLIT["train"])
    raw = (out / "stage2.jsonl").read_text()
    for qid in SPLIT["heldout"]:
        assert DL20_QUERIES[qid] not in raw


def test_every_list_has_n_candidates_and_its_ranking_is_a_permutation(built):
    _, out = built
    for r in read_jsonl(out / "stage2.jsonl"):
        assert len(r["extra_texts"]) == N
        assert sorted(r["ranking"]) == list(range(N))


def test_candidates_are_shown_in_bm25_order_and_windows_are_contiguous_bm25_slices(built):
    info, out = built
    qwho, dwho = _who(info)
    per_query: dict = {}
    for r in read_jsonl(out / "stage2.jsonl"):
        s, qid = qwho[r["query_text"]]
        if s != "scifact":
            per_query.setdefault((s, qid), []).append([dwho[t][1] for t in r["extra_texts"]])
    assert len(per_query) == 3 + 2
    for (s, qid), lists in per_query.items():
        bm25, splade = info["runs"][s]["bm25"][qid], info["runs"][s]["splade"][qid]
        rank = {d: i for i, d in enumerate(bm25)}
        pool = set(bm25[:POOL]) | set(splade[:POOL])
        assert len(lists) == LISTS
        for k, ids in enumerate(lists):
            ranks = [rank[d] for d in ids]
            assert ranks == sorted(ranks) and len(set(ranks)) == N, (s, qid, k)
            if k < WINDOWS:       # a contiguous draw: exactly the BM25 window's texts
                assert ids == bm25[ranks[0]:ranks[0] + N], (s, qid, k)
            else:
                assert set(ids) <= pool, (s, qid, k)


def test_teacher_is_qrels_then_splade_then_bm25_and_dl20_top1_has_the_max_grade(built):
    info, out = built
    qwho, dwho = _who(info)
    n_dl20 = 0
    for r in read_jsonl(out / "stage2.jsonl"):
        s, qid = qwho[r["query_text"]]
        if s == "scifact":
            continue
        ids = [dwho[t][1] for t in r["extra_texts"]]
        grades = info["grades"][qid] if s == "dl20" else {}
        sp = {d: i for i, d in enumerate(info["runs"][s]["splade"][qid])}
        bm = {d: i for i, d in enumerate(info["runs"][s]["bm25"][qid])}
        want = sorted(range(N), key=lambda i: (-max(grades.get(ids[i], 0), 0), sp.get(ids[i], 10 ** 6), bm[ids[i]]))
        assert r["ranking"] == want
        if s == "dl20":
            n_dl20 += 1
            top = ids[r["ranking"][0]]
            assert grades.get(top, 0) == max(grades.get(d, 0) for d in ids)
    assert n_dl20 == 2 * LISTS


def test_scifact_lists_are_bm25_top_n_with_a_relevant_document_first(built):
    info, out = built
    qwho, dwho = _who(info)
    sci = [r for r in read_jsonl(out / "stage2.jsonl") if qwho[r["query_text"]][0] == "scifact"]
    assert len(sci) == 2
    for r in sci:
        qid = qwho[r["query_text"]][1]
        ids = [dwho[t][1] for t in r["extra_texts"]]
        relevant = set(info["sci_qrels"][qid])
        assert ids[r["ranking"][0]] in relevant
        assert set(ids) == set(info["runs"]["scifact"]["bm25"][qid][:N]) | relevant
        assert all(t.startswith("Title: ") and " Content: " in t for t in r["extra_texts"])


def test_a_scifact_split_keeps_its_val_queries_out_of_every_list(tmp_path):
    info = make_mini_data(tmp_path / "src")
    split = tmp_path / "sci.json"
    split.write_text(json.dumps({"train": ["0", "12"], "val": ["7"]}))
    assert build(info, tmp_path / "out", *ARGS[:-4], "--scifact-lists", "10", "--scifact-split", str(split)) == 0
    qwho, _ = _who(info)
    sci = sorted(qwho[r["query_text"]][1] for r in read_jsonl(tmp_path / "out" / "stage2.jsonl")
                 if qwho[r["query_text"]][0] == "scifact")
    assert sci == ["0", "12"]                  # every train-part query once, the val query never


def test_records_carry_the_query_text_and_the_compact_prompt_by_default(built):
    _, out = built
    for r in read_jsonl(out / "stage2.jsonl"):
        user = r["messages_wo_content"][0]
        assert user["role"] == "user"
        assert user["content"].count(prompts.PLACEHOLDER) == N
        assert user["content"] == prompts.compact_prompt(r["query_text"], N)
        assert "messages_w_content" not in r          # --content-view is off by default


def test_stage1_reconstructs_passages_of_all_four_sources(built):
    info, out = built
    _, dwho = _who(info)
    recs = read_jsonl(out / "stage1.jsonl")
    assert len(recs) == 4 * 5
    sources = []
    for r in recs:
        user, answer = r["messages"]
        assert user == {"role": "user", "content": builder.reconstruction_record("x")["messages"][0]["content"]}
        assert answer["role"] == "assistant" and r["extra_texts"] == [answer["content"]]
        assert user["content"].count(prompts.PLACEHOLDER) == 1
        sources.append(dwho[answer["content"]][0])
    assert sorted(set(sources)) == ["dl20", "dl22", "scifact", "wiki"]
    assert all(sources.count(s) == 5 for s in set(sources))


def test_paper_template_without_query_token_gives_the_paper_prompt_and_no_query_text(tmp_path):
    info = make_mini_data(tmp_path)
    assert build(info, tmp_path / "out", *ARGS, "--no-query-token", "--template", "paper") == 0
    recs = read_jsonl(tmp_path / "out" / "stage2.jsonl")
    queries = [q for qs in info["queries"].values() for q in qs.values()]
    assert len(recs) == 3 * LISTS + 2 * LISTS + 2
    for r in recs:
        assert "query_text" not in r
        content = r["messages_wo_content"][0]["content"]
        assert content.count(prompts.PLACEHOLDER) == N
        matches = [q for q in queries if content == prompts.embedding_prompt(q, N)]
        assert len(matches) == 1, content[:200]


def test_same_seed_gives_identical_files_and_limit_queries_truncates(tmp_path):
    info = make_mini_data(tmp_path)
    assert build(info, tmp_path / "a", *ARGS) == 0
    assert build(info, tmp_path / "b", *ARGS) == 0
    for f in ("stage1.jsonl", "stage2.jsonl"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert build(info, tmp_path / "c", *ARGS, "--limit-queries", "1") == 0
    assert len(read_jsonl(tmp_path / "c" / "stage2.jsonl")) == 4
    assert len(read_jsonl(tmp_path / "c" / "stage1.jsonl")) == 4


def test_dropping_a_source_keeps_exactly_the_full_builds_other_lists(built, tmp_path):
    info, full = built
    assert build(info, tmp_path / "no-dl20", *ARGS, "--drop", "dl20-train") == 0
    qwho, _ = _who(info)
    want = [ln for ln in (full / "stage2.jsonl").read_text().splitlines()
            if qwho[json.loads(ln)["query_text"]][0] != "dl20"]
    assert (tmp_path / "no-dl20" / "stage2.jsonl").read_text().splitlines() == want      # same draws, byte for byte
    assert len(want) == 3 * LISTS + 2
    assert (tmp_path / "no-dl20" / "stage1.jsonl").read_bytes() == (full / "stage1.jsonl").read_bytes()


# ------------------------------------------------------------------ bad sources: one line, exit 2
def _edit_line(path: Path, line: int, fn) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = fn(lines[line - 1])
    path.write_text("".join(lines))


def _run_line_with_5_fields(info):
    path = info["data"] / "dl20" / "run.bm25.top100.txt"
    _edit_line(path, 7, lambda s: " ".join(s.split()[:5]) + "\n")
    return path, 7, "6 fields"


def _docs_tsv_line_without_tab(info):
    path = info["data"] / "dl22" / "docs.tsv"
    _edit_line(path, 5, lambda s: s.replace("\t", " "))
    return path, 5, "docid<TAB>text"


def _corpus_jsonl_line_not_json(info):
    path = info["data"] / "scifact" / "corpus.jsonl"
    _edit_line(path, 3, lambda s: s[: len(s) // 2] + "\n")
    return path, 3, "not valid JSON"


def _run_doc_missing_from_docs_tsv(info):
    # the first dl22 query's BM25 top-1 document: its first list (a window from rank 0 with the
    # default n=20 over 25 candidates) always shows it
    qid = sorted(DL22_QUERIES, key=lambda q: (len(q), q))[0]
    doc = info["runs"]["dl22"]["bm25"][qid][0]
    docs = info["data"] / "dl22" / "docs.tsv"
    docs.write_text("".join(ln for ln in docs.read_text().splitlines(keepends=True) if not ln.startswith(doc + "\t")))
    return info["data"] / "dl22" / "run.bm25.txt", info["lines"][("dl22", "bm25")][(qid, doc)], f"{doc!r} is not in"


def _qrels_grade_not_an_integer(info):
    path = info["data"] / "dl20" / "qrels.txt"
    _edit_line(path, 4, lambda s: " ".join(s.split()[:3] + ["high"]) + "\n")
    return path, 4, "not an integer"


def _split_qid_in_both_halves(info):
    info["split"].write_text(json.dumps({"train": ["101", "102"], "heldout": ["102", "104"]}))
    return info["split"], None, "in both 'train' and 'heldout'"


def _missing_data_folder(info):
    import shutil
    shutil.rmtree(info["data"])
    return info["data"], None, "data folder not found"


@pytest.mark.parametrize("breakage", [_run_line_with_5_fields, _docs_tsv_line_without_tab, _corpus_jsonl_line_not_json,
                                      _run_doc_missing_from_docs_tsv, _qrels_grade_not_an_integer,
                                      _split_qid_in_both_halves, _missing_data_folder],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_source_exits_2_with_one_line_naming_file_and_line_and_writes_nothing(tmp_path, capsys, breakage):
    info = make_mini_data(tmp_path)
    path, line, what = breakage(info)
    out = tmp_path / "out"
    capsys.readouterr()
    assert build(info, out) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err
    msg = lines[0]
    assert msg.startswith("error: "), msg
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert where in msg, msg
    assert what in msg, msg
    assert cap.out == ""
    assert not out.exists() or not any(out.iterdir())


def test_embed_cache_gives_the_same_table_without_encoding_its_documents_and_refuses_another_encoder(
        tmp_path, minilm_dir, monkeypatch, capsys):
    from perank_jax.data.embcache_build import build_embedding_cache
    from perank_jax.models.dense import DenseEncoder
    from perank_jax.train.embeddings import table_embedder
    info = make_mini_data(tmp_path / "src")
    corpus = info["data"] / "scifact" / "corpus.jsonl"
    good = build_embedding_cache(str(minilm_dir), corpus, tmp_path / "cache64", max_length=64, progress=False)
    other = build_embedding_cache(str(minilm_dir), corpus, tmp_path / "cache32", max_length=32, progress=False)
    encoded = []
    real = DenseEncoder.encode
    monkeypatch.setattr(DenseEncoder, "encode", lambda self, texts, *a, **k: (encoded.extend(texts),
                                                                              real(self, texts, *a, **k))[1])
    common = (*ARGS, "--embed", str(minilm_dir), "--encoder-max-len", "64")
    assert build(info, tmp_path / "plain", *common) == 0
    encoded.clear()
    assert build(info, tmp_path / "cached", *common, "--embed-cache", str(good)) == 0
    sci_docs = set(info["docs"]["scifact"].values())
    records = read_jsonl(tmp_path / "cached" / "stage2.jsonl")
    in_lists = {t for r in records for t in r["extra_texts"]} & sci_docs
    assert in_lists, "the slice must hold SciFact lists for this test to mean anything"
    assert not in_lists & set(encoded), "a SciFact document was encoded although the cache holds it"
    plain, cached = (table_embedder(tmp_path / d / "stage2.emb.npz") for d in ("plain", "cached"))
    texts = sorted({t for r in records for t in r["extra_texts"]})
    np.testing.assert_allclose(cached(texts), plain(texts), atol=1e-5)

    capsys.readouterr()
    assert build(info, tmp_path / "bad", *common, "--embed-cache", str(other)) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "max_length 32" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists(), "nothing is written when the cache is refused"
