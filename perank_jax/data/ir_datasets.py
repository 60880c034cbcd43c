"""Evaluation sets through ir_datasets (when it is installed and the machine is online): queries,
qrels and a docs store; offline, one error saying which local files to give instead."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from perank_jax.data.trec import DataError, doc_text


_LOCAL_FILES = ("provide local files instead: --queries (qid<TAB>text TSV or JSONL), --qrels (TREC qrels "
                "'qid 0 docid grade'), --run (TREC run 'qid Q0 docid rank score tag'), --corpus (JSONL "
                "with _id/title/text, or TSV docid<TAB>text); see docs/data.md for the layouts and where the public files are")


@dataclass
class IrDataset:
    name: str
    queries: dict
    qrels: dict
    docs_store: object

    def docs(self, docids: Iterable[str], title_format: bool = False) -> dict[str, str]:
        got = self.docs_store.get_many(list(docids))
        return {d: doc_text(r._asdict(), title_format) for d, r in got.items()}


def load_ir_dataset(name: str) -> IrDataset:
    """Queries, qrels and a docs store through ir_datasets; a DataError that says which local
    files to provide when ir_datasets is missing or the data cannot be fetched (offline)."""
    try:
        import ir_datasets
    except ImportError:
        raise DataError(f"ir_datasets is not installed (pip install ir_datasets), or {_LOCAL_FILES}") from None
    try:
        ds = ir_datasets.load(name)
    except KeyError:
        raise DataError(f"ir_datasets has no dataset {name!r}; {_LOCAL_FILES}") from None
    try:
        queries = {q.query_id: getattr(q, "text", None) or q[1] for q in ds.queries_iter()}
        qrels: dict = {}
        for r in ds.qrels_iter():
            qrels.setdefault(r.query_id, {})[r.doc_id] = int(r.relevance)
        return IrDataset(name, queries, qrels, ds.docs_store() if ds.has_docs() else None)
    except Exception as e:  # network failures come as many types (ConnectionError, URLError, OSError, ...)
        raise DataError(f"ir_datasets could not load {name!r} ({type(e).__name__}: {e}); this machine "
                        f"may be offline: {_LOCAL_FILES}") from None
