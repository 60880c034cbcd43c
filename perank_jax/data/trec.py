"""One reader (and writer) per retrieval file format; every part of the project uses these.

Formats:
  queries  `qid<TAB>text` TSV, or JSONL with `qid`/`_id`/`id` and `query`/`text`
  qrels    `qid 0 docid grade`
  run      `qid Q0 docid rank score tag`; per query ordered by score (desc), ties by rank
  corpus   JSONL with `_id`/`docid`/`id`, optional `title`, `text`/`contents`; or TSV `docid<TAB>text`
  requests rank_llm JSONL `{"query": {"text","qid"}, "candidates": [{"docid","score","doc": {...}}]}`
           or the flat `{"qid","query","candidates": [{"docid","rank","score","text"}]}`

Readers return dicts that remember the file and line each key came from (`.where(key)`),
so later validation (`build_rerank_requests`) can name the exact place of a problem.
Bad input raises DataError (a ValueError) whose message starts with `file:line:`.
The writers of the same formats are in perank_jax/data/trec_write.py.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

MAX_GRADE = 1000   # relevance grades beyond this are a wrong file or column, not a judgement


class DataError(ValueError):
    """Malformed or inconsistent retrieval data; the message names file and line."""


def _at(source, line=None) -> str:
    return f"{source}:{line}" if line is not None else f"{source}"


class Sourced(dict):
    """A dict that remembers where each key was read from (`where(key)` -> "file:line")."""

    def __init__(self, source: str | os.PathLike | None = None):
        super().__init__()
        self.source = str(source) if source is not None else "<memory>"
        self.lines: dict = {}

    def where(self, key) -> str:
        return _at(self.source, self.lines.get(key))


@dataclass(frozen=True)
class Hit:
    docid: str
    score: float
    rank: int


@dataclass
class Candidate:
    docid: str
    score: float
    text: str


@dataclass
class Request:
    qid: str
    query: str
    candidates: list[Candidate] = field(default_factory=list)


# ---------------------------------------------------------------------------- helpers
class DataFileNotFound(DataError, FileNotFoundError):
    """An input file that does not exist (a DataError, and a FileNotFoundError for old callers)."""


_BOM = b"\xef\xbb\xbf"


def _decode(raw: bytes, path, i) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        col = len(raw[:e.start].decode("utf-8", "replace")) + 1
        src = "utf-16" if i == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin1"
        raise DataError(f"{_at(path, i)}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {col}); "
                        f"re-encode the file as UTF-8 (e.g. `iconv -f {src} -t utf-8`)") from None


def iter_text_lines(path, skip_blank: bool = True) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line break) of a UTF-8 text file: the one place
    input text files are opened and read. Line breaks are \\n, \\r\\n or a lone \\r (as Python's
    universal newlines); a leading UTF-8 byte-order mark is dropped. A missing, unreadable or
    non-UTF-8 file raises a DataError naming the file (and line and column)."""
    p = Path(path)
    try:
        f = open(p, "rb")
    except FileNotFoundError:
        raise DataFileNotFound(f"{p}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, expected a file") from None
    except OSError as e:
        raise DataError(f"{p}: cannot open ({e.strerror or e})") from None
    i = 0
    with f:
        try:
            for n, raw in enumerate(f):
                if n == 0 and raw.startswith(_BOM):
                    raw = raw[len(_BOM):]
                if raw.endswith(b"\n"):
                    raw = raw[:-1]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                for piece in raw.split(b"\r") if b"\r" in raw else (raw,):
                    i += 1
                    line = _decode(piece, p, i)
                    if not skip_blank or line.strip():
                        yield i, line
        except OSError as e:
            raise DataError(f"{_at(p, i + 1)}: read error ({e.strerror or e})") from None


def _lines(path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line."""
    return iter_text_lines(path, skip_blank=True)


def _jsonl_lines(path) -> tuple[bool, Iterator[tuple[int, str]]]:
    """(whether the file is JSONL, its non-blank lines), reading it ONCE: a pipe or `<(...)`
    cannot be read a second time, so the first line is peeked, not re-read."""
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: file is empty")
    return first[1].lstrip().startswith("{"), itertools.chain([first], lines)


def _json(path, i, line) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{_at(path, i)}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError):        # an integer of > 4300 digits, nesting too deep
        raise DataError(f"{_at(path, i)}: not usable JSON (a number too long or nesting too deep)") from None
    if not isinstance(rec, dict):
        raise DataError(f"{_at(path, i)}: expected a JSON object, got {type(rec).__name__}")
    return rec


def _field(rec: Mapping, names: Sequence[str], path, i, what: str, required=True):
    for n in names:
        if n in rec and rec[n] is not None:
            return rec[n]
    if required:
        raise DataError(f"{_at(path, i)}: missing {what} (one of {', '.join(names)})")
    return None


def _nonempty(result: Sourced, path, what: str) -> Sourced:
    if not result:
        raise DataError(f"{path}: no {what} in file")
    return result


def doc_text(rec: Mapping, title_format: bool = False, path="<memory>", line=None) -> str:
    """Text of a document record. With `title_format` and a `title` field, the paper's BEIR
    formatting "Title: {title} Content: {text}" with whitespace collapsed (as the reference did)."""
    text = _field(rec, ("text", "contents", "segment", "body"), path, line, "document text")
    if not isinstance(text, str):
        raise DataError(f"{_at(path, line)}: document text must be a string, got {type(text).__name__}")
    title = rec.get("title")
    if title is not None and not isinstance(title, (str, int, float)):
        raise DataError(f"{_at(path, line)}: document title must be a string, got {type(title).__name__}")
    if title_format and title is not None:
        return " ".join(f"Title: {title} Content: {text}".split())
    return f"{title} {text}" if title else str(text)


# ---------------------------------------------------------------------------- readers
def read_queries(path) -> Sourced:
    """qid -> query text, from `qid<TAB>text` TSV or JSONL."""
    out = Sourced(path)
    jsonl, lines = _jsonl_lines(path)
    for i, line in lines:
        if jsonl:
            rec = _json(path, i, line)
            qid = _ident(_field(rec, ("qid", "_id", "id", "query_id"), path, i, "query id"), path, i, "query id")
            text = _field(rec, ("query", "text"), path, i, "query text")
            if not isinstance(text, str):
                raise DataError(f"{_at(path, i)}: query text is {text!r}, expected a string")
        else:
            parts = line.split("\t", 1)
            if len(parts) != 2:
                raise DataError(f"{_at(path, i)}: expected 'qid<TAB>query text', got {line[:80]!r}")
            qid, text = parts[0].strip(), parts[1]
        if not qid or not str(text).strip():
            raise DataError(f"{_at(path, i)}: empty query id or text")
        if qid in out:
            raise DataError(f"{_at(path, i)}: duplicate query id {qid!r} (first at line {out.lines[qid]})")
        out[qid], out.lines[qid] = str(text).strip(), i
    return _nonempty(out, path, "queries")


def read_qrels(path) -> Sourced:
    """qid -> {docid: grade}, from `qid 0 docid grade` lines."""
    out = Sourced(path)
    for i, line in _lines(path):
        parts = line.split()
        if len(parts) != 4:
            raise DataError(f"{_at(path, i)}: expected 'qid 0 docid grade' (4 fields), got {len(parts)}")
        qid, _, docid, grade = parts
        try:
            g = int(grade)
        except ValueError:
            raise DataError(f"{_at(path, i)}: grade {grade!r} is not an integer") from None
        if not -MAX_GRADE <= g <= MAX_GRADE:
            raise DataError(f"{_at(path, i)}: grade {grade} is out of range (|grade| <= {MAX_GRADE}; TREC grades "
                            "are small integers such as 0-3): wrong column or file?")
        judged = out.setdefault(qid, {})
        out.lines.setdefault(qid, i)
        if docid in judged:
            raise DataError(f"{_at(path, i)}: duplicate judgement for query {qid!r}, doc {docid!r}")
        judged[docid] = g
        out.lines[(qid, docid)] = i
    return _nonempty(out, path, "judgements")


def read_run(path) -> Sourced:
    """qid -> [Hit] ordered by score (desc), ties by rank, from `qid Q0 docid rank score tag`."""
    out = Sourced(path)
    for i, line in _lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise DataError(f"{_at(path, i)}: expected 'qid Q0 docid rank score tag' (6 fields), got {len(parts)}")
        qid, _, docid, rank, score, _tag = parts
        try:
            r, s = int(rank), float(score)
        except ValueError:
            raise DataError(f"{_at(path, i)}: rank {rank!r} / score {score!r} not an int / a number") from None
        if not math.isfinite(s):
            raise DataError(f"{_at(path, i)}: score {score!r} is not finite")
        if (qid, docid) in out.lines:
            raise DataError(f"{_at(path, i)}: duplicate docid {docid!r} for query {qid!r} "
                            f"(first at line {out.lines[(qid, docid)]})")
        out.setdefault(qid, []).append(Hit(docid, s, r))
        out.lines.setdefault(qid, i)
        out.lines[(qid, docid)] = i
    for qid, hits in out.items():
        hits.sort(key=lambda h: (-h.score, h.rank))
    return _nonempty(out, path, "run lines")


def read_corpus(path, title_format: bool = False) -> Sourced:
    """docid -> text, from JSONL (`_id`/`docid`/`id`, optional `title`, `text`/`contents`)
    or TSV `docid<TAB>text`. See `doc_text` for `title_format`."""
    out = Sourced(path)
    jsonl, rows = _jsonl_lines(path)
    lines = out.lines
    for i, line in rows:
        if jsonl:
            rec = _json(path, i, line)
            docid = _ident(_field(rec, ("_id", "docid", "id", "doc_id"), path, i, "document id"), path, i,
                           "document id")
            text = doc_text(rec, title_format, path, i)
        else:
            docid, sep, text = line.partition("\t")
            if not sep or not docid.strip():
                raise DataError(f"{_at(path, i)}: expected 'docid<TAB>text', got {line[:80]!r}")
        if docid in out:
            raise DataError(f"{_at(path, i)}: duplicate document id {docid!r} (first at line {lines[docid]})")
        out[docid] = text
        lines[docid] = i
    return _nonempty(out, path, "documents")


def _number(v, path, i, name: str, integer: bool = False):
    """A finite number (or numeric string) from field `name` of line i; DataError otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        x = None
    else:
        try:
            x = int(v) if integer and not isinstance(v, float) else float(v)
        except ValueError:
            x = None
    if x is None or not math.isfinite(x) or (integer and x != int(x)):
        kind = "an integer" if integer else "a finite number"
        raise DataError(f"{_at(path, i)}: field {name} is {v!r}, expected {kind}")
    return int(x) if integer else x


def _ident(v, path, i, name: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)) or not str(v).strip():
        raise DataError(f"{_at(path, i)}: field {name} is {v!r}, expected a non-empty string or integer id")
    return str(v)


def read_requests(path, title_format: bool = False) -> list[Request]:
    """rank_llm request JSONL or the flat dl20 candidates JSONL -> [Request]."""
    out, seen = [], {}
    for i, line in _lines(path):
        rec = _json(path, i, line)
        q = _field(rec, ("query",), path, i, "query")
        if isinstance(q, dict):  # rank_llm: {"query": {"text", "qid"}, candidates with "doc"}
            qid = _ident(_field(q, ("qid",), path, i, "query.qid"), path, i, "query.qid")
            query, qname = _field(q, ("text",), path, i, "query.text"), "query.text"
        else:
            qid, query, qname = _ident(_field(rec, ("qid",), path, i, "qid"), path, i, "qid"), q, "query"
        if not isinstance(query, str) or not query.strip():
            raise DataError(f"{_at(path, i)}: field {qname} is {query!r}, expected a non-empty string")
        if qid in seen:
            raise DataError(f"{_at(path, i)}: duplicate query id {qid!r} (first at line {seen[qid]})")
        seen[qid] = i
        cands = _field(rec, ("candidates",), path, i, "candidates")
        if not isinstance(cands, list) or not cands:
            raise DataError(f"{_at(path, i)}: query {qid!r} has no candidates")
        items, docids = [], set()
        for j, c in enumerate(cands):
            if not isinstance(c, dict):
                raise DataError(f"{_at(path, i)}: candidate {j} of query {qid!r} is not an object")
            docid = _ident(_field(c, ("docid",), path, i, f"candidates[{j}].docid"), path, i,
                           f"candidates[{j}].docid")
            if docid in docids:
                raise DataError(f"{_at(path, i)}: duplicate docid {docid!r} in the candidates of query {qid!r}")
            docids.add(docid)
            score = -(j + 1) if c.get("score") is None else _number(c["score"], path, i, f"candidates[{j}].score")
            rank = j + 1 if c.get("rank") is None else _number(c["rank"], path, i, f"candidates[{j}].rank", True)
            text = doc_text(c["doc"] if isinstance(c.get("doc"), dict) else c, title_format, path, i)
            if not text.strip():
                raise DataError(f"{_at(path, i)}: candidates[{j}]: document {docid!r} has empty text (query "
                                f"{qid!r}; nothing to encode)")
            items.append((rank, j, Candidate(docid, float(score), text)))
        items.sort(key=lambda t: (t[0], t[1]))
        out.append(Request(qid, str(query), [t[2] for t in items]))
    if not out:
        raise DataError(f"{path}: no requests in file")
    return out


# ---------------------------------------------------------------------------- joins
def build_rerank_requests(run: Mapping, queries: Mapping, corpus: Mapping, k: int | None = None
                          ) -> list[Request]:
    """Join a run (read_run), queries (read_queries) and a corpus (read_corpus) into rerank
    requests (top-k candidates per query, in first-stage order), in the run's query order.
    Every query of the run needs text, every query needs candidates, every docid needs text."""
    where = getattr(run, "where", lambda key: "<run>")
    qsrc, csrc = getattr(queries, "source", "<queries>"), getattr(corpus, "source", "<corpus>")
    if not run:
        raise DataError(f"{getattr(run, 'source', '<run>')}: the run is empty")
    for qid in run:
        if qid not in queries:
            raise DataError(f"{where(qid)}: query {qid!r} has no text in {qsrc}")
    missing_q = [q for q in queries if q not in run]
    if missing_q:
        qw = getattr(queries, "where", lambda key: qsrc)
        raise DataError(f"{qw(missing_q[0])}: query {missing_q[0]!r} has no candidates in the run "
                        f"{getattr(run, 'source', '')} ({len(missing_q)} such queries); "
                        f"pass only the run's queries")
    out = []
    for qid, hits in run.items():
        hits = list(hits)[:k] if k else list(hits)
        if not hits:
            raise DataError(f"{where(qid)}: query {qid!r} has no candidates")
        cands = []
        for h in hits:
            docid, score = (h, 0.0) if isinstance(h, str) else (h.docid, h.score)
            text = corpus.get(docid)
            if text is None:
                raise DataError(f"{where((qid, docid))}: docid {docid!r} (query {qid!r}) is not in the corpus {csrc}")
            if not str(text).strip():
                cw = getattr(corpus, "where", lambda key: csrc)
                raise DataError(f"{cw(docid)}: document {docid!r} has empty text (a candidate of query {qid!r}; "
                                "nothing to encode): fill it in or drop it from the run")
            cands.append(Candidate(docid, score, text))
        out.append(Request(qid, queries[qid], cands))
    return out
