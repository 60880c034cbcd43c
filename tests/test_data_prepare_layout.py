"""`perank data fetch` prepares the fetched sources into the layout the configs and builders read.

A synthetic miniature of every pinned source (rank_llm retrieval JSON and TREC runs, anserini
qrels and gzipped topics, the SciFact CSV zip, NFCorpus' preprocessed docs, the FlashRAG sample,
the splade triples) is fetched from a file:// mirror through the CLI, and each prepared file is
checked against the rule that made the development machine's copy (docs/data.md).
"""
import csv
import gzip
import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from perank_jax.cli import main
from perank_jax.data.fetch import load_manifest
from perank_jax.data.prepare import DL20_RUNS, DL22_RUNS, abstract_sentences
from perank_jax.data.trec import DataError, read_corpus, read_qrels, read_queries, read_requests, read_run

COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
SHARED = Path("/work/shared/data")          # the development machine's copy, where it exists
FETCHED = Path(os.environ.get("PERANK_DATA_DOWNLOADS", "data/raw/downloads"))   # `perank data fetch` output
LAYOUT = {
    "dl20": ["bm25.top100.candidates.jsonl", "docs.tsv", "qrels.txt", "queries.tsv", "run.ada2.top100.txt",
             "run.bm25.top100.txt", "run.bm25rm3.top100.txt", "run.splade_pp_ed.top100.txt", "run.tasb.top100.txt"],
    "dl22": ["docs.tsv", "queries.tsv", "run.bm25.txt", "run.bm25_rm3.txt", "run.splade_pp_ed.txt"],
    "scifact": ["corpus.jsonl", "qrels.test.txt", "qrels.train.txt", "queries.test.tsv", "queries.train.tsv",
                "run.bm25.test.top100.txt", "run.bm25.train.top100.txt"],
    "nfcorpus": ["corpus.jsonl", "qrels.test.txt", "queries.test.tsv", "run.bm25.test.top100.txt"],
    "wiki": ["LICENSE.FlashRAG", "passages.jsonl"],
    "msmarco-triples": ["LICENSE.splade", "triples.tsv"],
}


def rank_llm(queries, tag):
    """A rank_llm retrieve_results JSON: [{"query", "hits": [{"content", "qid", "docid", "rank", "score"}]}]."""
    return json.dumps([{"query": q, "hits": [{"content": f"{tag} text of {d}\tx", "qid": qid, "docid": d,
                                              "rank": r, "score": 10.0 - r} for r, d in enumerate(docs, 1)]}
                       for qid, q, docs in queries], indent=1).encode()


def csv_text(header, rows):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    return buf.getvalue()


def scifact_zip():
    """The original release's CSVs; an abstract is a numpy array repr of its sentences."""
    claims = ["id", "claim", "evidence_doc_id", "evidence_label", "evidence_sentences", "cited_doc_ids"]
    abstract = "[" + repr("Cats purr when content.") + "\n " + repr('It\'s a sound, "low".') + "]"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("corpus_train.csv", csv_text(["doc_id", "title", "abstract", "structured"], [
            ["5", "Cats purr", abstract, "False"], ["3", "Dogs", "['Dogs bark at cats.']", "False"]]))
        z.writestr("claims_train.csv", csv_text(claims, [
            ["2", "Cats  purr.", "5", "SUPPORT", "[0]", "[ 5 3]"], ["2", "Cats  purr.", "5", "SUPPORT", "[1]", "[ 5 3]"],
            ["4", "Dogs bark.", "", "", "[]", "[3]"]]))
        z.writestr("claims_validation.csv", csv_text(claims, [["1", "Do cats purr?", "5", "SUPPORT", "[0]", "[5]"]]))
        z.writestr("claims_test.csv", csv_text(claims, []))
    return buf.getvalue()


def sources():
    dl20_q = [("23849", "are  records public", ["100", "9"]), ("156498", "docs auto save", ["10", "9"])]
    dl22_q = [("2030608", "define:  monsieur", ["msmarco_passage_00_7", "msmarco_passage_11_1"])]
    src = {f"dl20/{f}.json": rank_llm(dl20_q, f) for f in DL20_RUNS.values()}
    src.update({f"dl20/{f}.trec.txt": f"23849 Q0 100 1 9.0 {f}\n".encode() for f in DL20_RUNS.values()})
    src["dl20/qrels.dl20-passage.txt"] = b"23849 0 100 2\n156498 0 9 1\n"
    src.update({f"dl22/{f}.json": rank_llm(dl22_q, f) for f in DL22_RUNS.values()})
    src["scifact/scifact.zip"] = scifact_zip()
    src["scifact/qrels.beir-v1.0.0-scifact.test.txt"] = b"1 0 5 1\n"
    src["nfcorpus/test.docs"] = b"MED-1\tstatin breast cancer\nMED-2\tvitamin d bone"
    src["nfcorpus/qrels.beir-v1.0.0-nfcorpus.test.txt"] = b"PLAIN-2 0 MED-1 2\n"
    src["nfcorpus/topics.beir-v1.0.0-nfcorpus.test.tsv.gz"] = gzip.compress(b"PLAIN-2\tStatins and Cancer\n")
    src["wiki/sample_data.jsonl"] = b'{"id": "0", "contents": "\\"Evan\\"\\nEvan Morris"}\n'
    src["wiki/LICENSE"] = b"MIT License\n"
    src["msmarco-triples/raw.tsv"] = b"what is a cat\ta cat purrs\ta dog barks\n"
    src["msmarco-triples/LICENSE"] = b"CC BY-NC-SA 4.0\n"
    return src


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(out folder, the synthetic sources) after `perank data fetch --mirror DIR --manifest M`."""
    t = tmp_path_factory.mktemp("prepare")
    files, mirror = sources(), t / "mirror"
    entries = []
    for name, data in files.items():
        path = f"o/r/{COMMIT}/{name}"
        (mirror / path).parent.mkdir(parents=True, exist_ok=True)
        (mirror / path).write_bytes(data)
        entries.append({"name": name, "url": f"https://raw.githubusercontent.com/{path}", "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(), "source": "synthetic", "terms": "test"})
    (t / "m.json").write_text(json.dumps({"files": entries}))
    assert main(["data", "fetch", "--out", str(t / "raw"), "--mirror", str(mirror), "--manifest", str(t / "m.json")]) == 0
    return t / "raw", files


def test_the_prepared_layout_is_the_file_set_the_builders_read(prepared):
    out, _ = prepared
    got = {s: sorted(p.name for p in (out / s).iterdir()) for s in LAYOUT}
    assert got == LAYOUT
    if SHARED.is_dir():                  # the same names as the development machine's copy
        assert {s: sorted(p.name for p in (SHARED / s).iterdir()) for s in LAYOUT} == LAYOUT


def test_the_packaged_manifest_names_exactly_the_sources_prepare_reads():
    assert {f.name for f in load_manifest()} == set(sources())


def test_dl20_queries_docs_and_candidates_come_from_the_rank_llm_results(prepared):
    out, files = prepared
    assert (out / "dl20" / "queries.tsv").read_text() == "23849\tare records public\n156498\tdocs auto save\n"
    docs = (out / "dl20" / "docs.tsv").read_text().splitlines()
    assert [d.split("\t")[0] for d in docs] == ["9", "10", "100"]             # numeric docid order
    assert docs[0] == "9\tBM25 text of 9 x"                                   # first seen (BM25), one line
    assert (out / "dl20" / "run.tasb.top100.txt").read_bytes() == files["dl20/D_BERT_KD_TASB.trec.txt"]
    assert (out / "dl20" / "qrels.txt").read_bytes() == files["dl20/qrels.dl20-passage.txt"]
    reqs = read_requests(out / "dl20" / "bm25.top100.candidates.jsonl")
    assert [(r.qid, r.query, [c.docid for c in r.candidates]) for r in reqs] == [
        ("23849", "are  records public", ["100", "9"]), ("156498", "docs auto save", ["10", "9"])]


def test_dl22_runs_are_written_from_the_rank_llm_results_with_their_own_tags(prepared):
    out, _ = prepared
    assert (out / "dl22" / "run.bm25_rm3.txt").read_text() == (
        "2030608 Q0 msmarco_passage_00_7 1 9.0 bm25_rm3\n2030608 Q0 msmarco_passage_11_1 2 8.0 bm25_rm3\n")
    assert (out / "dl22" / "queries.tsv").read_text() == "2030608\tdefine: monsieur\n"
    assert [line.split("\t")[0] for line in (out / "dl22" / "docs.tsv").read_text().splitlines()] == [
        "msmarco_passage_00_7", "msmarco_passage_11_1"]                        # first-seen order


def test_scifact_is_converted_from_the_original_csv_release(prepared):
    out, _ = prepared
    corpus = [json.loads(line) for line in (out / "scifact" / "corpus.jsonl").read_text().splitlines()]
    assert corpus[0] == {"_id": "5", "title": "Cats purr", "text": 'Cats purr when content. It\'s a sound, "low".'}
    assert (out / "scifact" / "queries.train.tsv").read_text() == "2\tCats  purr.\n4\tDogs bark.\n"
    assert (out / "scifact" / "queries.test.tsv").read_text() == "1\tDo cats purr?\n"
    assert (out / "scifact" / "qrels.train.txt").read_text() == "2 0 3 1\n2 0 5 1\n4 0 3 1\n"
    run = read_run(out / "scifact" / "run.bm25.train.top100.txt")
    assert [h.docid for h in run["4"]] == ["3", "5"]        # the match first, then the unmatched one (filled)
    assert [h.docid for h in run["2"]][0] == "5"


def test_nfcorpus_is_converted_from_the_preprocessed_release(prepared):
    out, _ = prepared
    assert read_corpus(out / "nfcorpus" / "corpus.jsonl") == {"MED-1": "statin breast cancer",
                                                              "MED-2": "vitamin d bone"}
    assert read_queries(out / "nfcorpus" / "queries.test.tsv") == {"PLAIN-2": "Statins and Cancer"}
    assert read_qrels(out / "nfcorpus" / "qrels.test.txt") == {"PLAIN-2": {"MED-1": 2}}
    assert [h.docid for h in read_run(out / "nfcorpus" / "run.bm25.test.top100.txt")["PLAIN-2"]] == ["MED-1", "MED-2"]


def test_wiki_and_triples_are_copied_with_their_licences(prepared):
    out, files = prepared
    assert (out / "wiki" / "passages.jsonl").read_bytes() == files["wiki/sample_data.jsonl"]
    assert (out / "msmarco-triples" / "LICENSE.splade").read_bytes() == files["msmarco-triples/LICENSE"]


def test_an_unreadable_scifact_abstract_is_an_error_naming_the_document():
    with pytest.raises(DataError, match="corpus_train.csv doc 7: unreadable abstract"):
        abstract_sentences("['unterminated", "corpus_train.csv doc 7")


def test_prepare_without_fetched_sources_says_to_fetch_first(tmp_path, capsys):
    (tmp_path / "m.json").write_text(json.dumps({"files": [
        {"name": "wiki/LICENSE", "url": f"https://raw.githubusercontent.com/o/r/{COMMIT}/LICENSE", "size": 4,
         "sha256": hashlib.sha256(b"MIT\n").hexdigest(), "source": "s", "terms": "t"}]}))
    (tmp_path / "mirror" / "o" / "r" / COMMIT).mkdir(parents=True)
    (tmp_path / "mirror" / "o" / "r" / COMMIT / "LICENSE").write_bytes(b"MIT\n")
    code = main(["data", "fetch", "--out", str(tmp_path / "raw"), "--mirror", str(tmp_path / "mirror"),
                 "--manifest", str(tmp_path / "m.json"), "--sets", "wiki"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "wiki/sample_data.jsonl: source file missing; run `perank data fetch` first" in err, err
    assert main(["data", "fetch", "--out", str(tmp_path / "raw"), "--sets", "dl21"]) == 2
    assert "--sets: unknown dl21" in capsys.readouterr().err


BM25_RUNS = {"scifact/run.bm25.test.top100.txt", "scifact/run.bm25.train.top100.txt",
             "nfcorpus/run.bm25.test.top100.txt"}


def rounded_scores(path):
    """Per query, the sorted scores at the development copy's 4 decimals (independent of tie order)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        q, _, _, _, s, _ = line.split()
        out.setdefault(q, []).append(round(float(s), 4) + 0.0)
    return {q: sorted(v) for q, v in out.items()}


@pytest.mark.skipif(not (SHARED.is_dir() and (FETCHED / "dl20").is_dir()),
                    reason="needs the development copy and fetched sources (PERANK_DATA_DOWNLOADS=DIR/downloads)")
def test_prepare_reproduces_the_development_copy_from_the_fetched_sources(tmp_path):
    """Byte for byte, except the three BM25 runs: those have the same scores per query (tie order aside)."""
    from perank_jax.data.prepare import prepare
    from perank_jax.evaluate.bm25 import bm25_run
    shutil.copytree(FETCHED, tmp_path / "downloads")
    prepare(tmp_path, bm25=bm25_run)
    for s, names in LAYOUT.items():
        for n in names:
            rel = f"{s}/{n}"
            if rel in BM25_RUNS:
                assert rounded_scores(tmp_path / rel) == rounded_scores(SHARED / rel), rel
            else:
                assert (tmp_path / rel).read_bytes() == (SHARED / rel).read_bytes(), rel
