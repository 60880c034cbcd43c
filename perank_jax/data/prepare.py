"""Prepare the fetched public source files (perank_jax/data/fetch.py) into the layout the builders read.

`prepare(out)` reads `<out>/downloads/<name>` (the names of perank_jax/data/sources.json) and
writes, each file atomically:

  dl20/            queries.tsv, qrels.txt, docs.tsv, bm25.top100.candidates.jsonl,
                   run.{bm25,bm25rm3,tasb,ada2,splade_pp_ed}.top100.txt
  dl22/            queries.tsv, docs.tsv, run.{bm25,bm25_rm3,splade_pp_ed}.txt
  scifact/         corpus.jsonl, queries.{test,train}.tsv, qrels.{test,train}.txt,
                   run.bm25.{test,train}.top100.txt
  nfcorpus/        corpus.jsonl, queries.test.tsv, qrels.test.txt, run.bm25.test.top100.txt
  wiki/            passages.jsonl, LICENSE.FlashRAG
  msmarco-triples/ triples.tsv, LICENSE.splade

Every rule below reproduces the development machine's copy byte for byte, except the BM25 runs,
which are the package's own first stage (`bm25`, passed in by the caller: perank_jax.evaluate.bm25
is a higher layer) over the prepared corpus and queries; docs/data.md says how they differ.
"""
from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import tokenize
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

from perank_jax.core.atomic import atomic_write
from perank_jax.data.trec import DataError, read_corpus, read_queries
from perank_jax.data.trec_write import write_run

SETS = ("dl20", "dl22", "scifact", "nfcorpus", "wiki", "msmarco-triples")
# output run name -> rank_llm retriever folder (and the download's name stem)
DL20_RUNS = {"bm25": "BM25", "splade_pp_ed": "SPLADE_P_P_ENSEMBLE_DISTIL", "bm25rm3": "BM25_RM3",
             "tasb": "D_BERT_KD_TASB", "ada2": "OPEN_AI_ADA2"}
DL22_RUNS = {"bm25": "BM25", "splade_pp_ed": "SPLADE_P_P_ENSEMBLE_DISTIL", "bm25_rm3": "BM25_RM3"}
SCIFACT_ZIP = "scifact/scifact.zip"
SCIFACT_SPLITS = {"test": "claims_validation.csv", "train": "claims_train.csv"}   # BEIR's test = dev claims
BM25Fn = Callable[..., Mapping[str, list]]      # perank_jax.evaluate.bm25.bm25_run


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _flat(text: str) -> str:
    """A TSV field: tabs and line breaks become spaces, all else kept (double spaces too)."""
    return str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ")


class Downloads:
    """The verified source files under `<out>/downloads`, by manifest name."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, name: str) -> Path:
        p = self.root / name
        if not p.is_file():
            raise DataError(f"{p}: source file missing; run `perank data fetch` first")
        return p

    def bytes(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def json(self, name: str):
        try:
            return json.loads(self.bytes(name).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{self.root / name}: not valid JSON ({e})") from None


def _write_text(path: Path, rows: Iterable[str]) -> Path:
    rows = list(rows)
    if not rows:
        raise DataError(f"{path}: refusing to write an empty file")
    return atomic_write(path, lambda f: f.writelines(rows))


def _copy(data: bytes, path: Path) -> Path:
    return atomic_write(path, lambda f: f.write(data), binary=True)


def rank_llm_results(src: Downloads, name: str) -> list[tuple[str, str, list[dict]]]:
    """(qid, query, hits) of a rank_llm retrieve_results JSON, in its order; each hit has
    content, docid, rank and score."""
    where = src.root / name
    try:
        out = []
        for e in src.json(name):
            hits = e["hits"]
            for h in hits:
                if not all(k in h for k in ("content", "docid", "rank", "score", "qid")):
                    raise KeyError("a hit without content/docid/rank/score/qid")
            out.append((str(hits[0]["qid"]), e["query"], hits))
        return out
    except (KeyError, TypeError, IndexError) as e:
        raise DataError(f"{where}: not a rank_llm retrieve_results file ({e})") from None


def _texts(results: Iterable[list]) -> dict[str, str]:
    """docid -> one-line text, the first seen over the given result lists."""
    docs: dict[str, str] = {}
    for res in results:
        for _, _, hits in res:
            for h in hits:
                docs.setdefault(str(h["docid"]), one_line(h["content"]))
    return docs


def prepare_dl20(src: Downloads, out: Path) -> list[Path]:
    res = {run: rank_llm_results(src, f"dl20/{folder}.json") for run, folder in DL20_RUNS.items()}
    d = out / "dl20"
    written = [_copy(src.bytes(f"dl20/{folder}.trec.txt"), d / f"run.{run}.top100.txt")
               for run, folder in DL20_RUNS.items()]
    written.append(_copy(src.bytes("dl20/qrels.dl20-passage.txt"), d / "qrels.txt"))
    written.append(_write_text(d / "queries.tsv", (f"{q}\t{one_line(t)}\n" for q, t, _ in res["bm25"])))
    docs = _texts(res.values())
    written.append(_write_text(d / "docs.tsv", (f"{k}\t{docs[k]}\n" for k in sorted(docs, key=int))))
    written.append(_write_text(d / "bm25.top100.candidates.jsonl", (json.dumps(
        {"qid": q, "query": t, "candidates": [{"docid": str(h["docid"]), "rank": h["rank"], "score": h["score"],
                                               "text": h["content"]} for h in hits]},
        ensure_ascii=False) + "\n" for q, t, hits in res["bm25"])))
    return written


def prepare_dl22(src: Downloads, out: Path) -> list[Path]:
    res = {run: rank_llm_results(src, f"dl22/{folder}.json") for run, folder in DL22_RUNS.items()}
    d = out / "dl22"
    written = [_write_text(d / f"run.{run}.txt", (f"{q} Q0 {h['docid']} {h['rank']} {h['score']} {run}\n"
                                                  for q, _, hits in r for h in hits))
               for run, r in res.items()]
    written.append(_write_text(d / "queries.tsv", (f"{q}\t{one_line(t)}\n" for q, t, _ in res["bm25"])))
    docs = _texts(res.values())
    written.append(_write_text(d / "docs.tsv", (f"{k}\t{t}\n" for k, t in docs.items())))
    return written


def _csv_rows(zf: zipfile.ZipFile, member: str, where: str) -> list[dict]:
    try:
        with zf.open(member) as raw:
            return list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))
    except KeyError:
        raise DataError(f"{where}: has no {member}") from None


def abstract_sentences(cell: str, where: str) -> list[str]:
    """The sentences of a SciFact CSV abstract cell, a numpy array repr `['s1' 's2' ...]`."""
    try:
        toks = tokenize.generate_tokens(io.StringIO(cell).readline)
        return [ast.literal_eval(t.string) for t in toks if t.type == tokenize.STRING]
    except (tokenize.TokenError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: unreadable abstract ({e})") from None


def _first_per_id(rows: list[dict]) -> dict[str, dict]:
    first: dict[str, dict] = {}
    for r in rows:
        first.setdefault(r["id"], r)
    return first


def prepare_scifact(src: Downloads, out: Path, bm25: BM25Fn) -> list[Path]:
    where = str(src.path(SCIFACT_ZIP))
    d = out / "scifact"
    with zipfile.ZipFile(src.path(SCIFACT_ZIP)) as zf:
        corpus = _csv_rows(zf, "corpus_train.csv", where)
        claims = {s: _first_per_id(_csv_rows(zf, m, where)) for s, m in SCIFACT_SPLITS.items()}
    written = [_write_text(d / "corpus.jsonl", (json.dumps(
        {"_id": r["doc_id"], "title": r["title"],
         "text": " ".join(abstract_sentences(r["abstract"], f"{where}: corpus_train.csv doc {r['doc_id']}"))},
        ensure_ascii=False) + "\n" for r in corpus))]
    for split, rows in claims.items():
        written.append(_write_text(d / f"queries.{split}.tsv", (f"{q}\t{_flat(r['claim'])}\n" for q, r in rows.items())))
    written.append(_write_text(d / "qrels.train.txt", (
        f"{q} 0 {doc} 1\n" for q, r in claims["train"].items()
        for doc in sorted(r["cited_doc_ids"].strip("[]").split(), key=int))))
    written.append(_copy(src.bytes("scifact/qrels.beir-v1.0.0-scifact.test.txt"), d / "qrels.test.txt"))
    for split in SCIFACT_SPLITS:
        written.append(bm25_file(bm25, d / "corpus.jsonl", d / f"queries.{split}.tsv",
                                 d / f"run.bm25.{split}.top100.txt"))
    return written


def prepare_nfcorpus(src: Downloads, out: Path, bm25: BM25Fn) -> list[Path]:
    d = out / "nfcorpus"
    docs = src.path("nfcorpus/test.docs")
    rows = []
    for i, line in enumerate(docs.read_text(encoding="utf-8").splitlines(), 1):
        docid, sep, text = line.partition("\t")
        if not sep:
            raise DataError(f"{docs}:{i}: expected docid<TAB>text")
        rows.append(json.dumps({"_id": docid, "title": "", "text": text}, ensure_ascii=False) + "\n")
    written = [_write_text(d / "corpus.jsonl", rows)]
    topics = src.path("nfcorpus/topics.beir-v1.0.0-nfcorpus.test.tsv.gz")
    try:
        written.append(_copy(gzip.decompress(topics.read_bytes()), d / "queries.test.tsv"))
    except (OSError, EOFError) as e:
        raise DataError(f"{topics}: not a gzip file ({e})") from None
    written.append(_copy(src.bytes("nfcorpus/qrels.beir-v1.0.0-nfcorpus.test.txt"), d / "qrels.test.txt"))
    written.append(bm25_file(bm25, d / "corpus.jsonl", d / "queries.test.tsv", d / "run.bm25.test.top100.txt"))
    return written


def prepare_wiki(src: Downloads, out: Path) -> list[Path]:
    return [_copy(src.bytes("wiki/sample_data.jsonl"), out / "wiki" / "passages.jsonl"),
            _copy(src.bytes("wiki/LICENSE"), out / "wiki" / "LICENSE.FlashRAG")]


def prepare_triples(src: Downloads, out: Path) -> list[Path]:
    return [_copy(src.bytes("msmarco-triples/raw.tsv"), out / "msmarco-triples" / "triples.tsv"),
            _copy(src.bytes("msmarco-triples/LICENSE"), out / "msmarco-triples" / "LICENSE.splade")]


def bm25_file(bm25: BM25Fn, corpus: Path, queries: Path, path: Path) -> Path:
    """The top-100 BM25 run of `queries` over `corpus`, every query with 100 candidates (those that
    match no query term last, score 0 and below, in corpus order)."""
    hits = bm25(read_corpus(corpus), read_queries(queries), k=100, fill=True)
    return write_run(hits, path, tag="bm25s", scores="given")


def prepare(out, sets: Iterable[str] = SETS, bm25: BM25Fn | None = None,
            log: Callable[[str], None] = lambda m: None) -> list[Path]:
    """Write the layout of `sets` under `out` from `out/downloads`; `bm25(corpus, queries)` (e.g.
    perank_jax.evaluate.bm25.bm25_run) makes the SciFact and NFCorpus first-stage runs."""
    out = Path(out)
    src = Downloads(out / "downloads")
    unknown = sorted(set(sets) - set(SETS))
    if unknown:
        raise DataError(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(SETS)}")
    if bm25 is None and {"scifact", "nfcorpus"} & set(sets):
        raise ValueError("prepare: scifact and nfcorpus need a BM25 function (perank_jax.evaluate.bm25.bm25_run)")
    steps = {"dl20": lambda: prepare_dl20(src, out), "dl22": lambda: prepare_dl22(src, out),
             "scifact": lambda: prepare_scifact(src, out, bm25), "nfcorpus": lambda: prepare_nfcorpus(src, out, bm25),
             "wiki": lambda: prepare_wiki(src, out), "msmarco-triples": lambda: prepare_triples(src, out)}
    written = []
    for s in SETS:
        if s in sets:
            log(f"preparing {out / s}")
            written += steps[s]()
    return written
