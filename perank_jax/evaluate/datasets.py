"""The datasets a `perank tables` config names: their rerank requests and qrels, query splits
(configs/splits/*.json) and `perank encode` embedding caches."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from perank_jax.core.config import ConfigError, setting
from perank_jax.data.trec import build_rerank_requests, read_corpus, read_qrels, read_queries, read_requests, read_run


@dataclass
class DatasetSpec:
    name: str
    qrels: str
    queries: str | None = None
    run: str | None = None
    corpus: str | None = None
    requests: str | None = None      # rank_llm / dl20 candidates JSONL instead of queries+run+corpus
    title_format: bool = False       # BEIR "Title: {title} Content: {text}"
    max_queries: int | None = setting(int, None, 1)   # the first N queries of the run (None: all)
    split: str | None = None         # "file.json:key": only the qids listed under `key` (e.g. a held-out half)
    embeddings: str | list[str] | None = None  # `perank encode` caches of the corpus (one per encoder):
                                     # Table 2's PE-Rank and embedding methods take passage vectors by
                                     # docid from the one their encoder made


def load_dataset(d: DatasetSpec):
    """(requests, qrels restricted to those queries)."""
    if d.requests:
        reqs = read_requests(d.requests, title_format=d.title_format)
    else:
        run = read_run(d.run)
        queries = read_queries(d.queries)
        for q in [q for q in queries if q not in run]:            # extra topics are fine here
            del queries[q]
        reqs = build_rerank_requests(run, queries, read_corpus(d.corpus, d.title_format))
    if d.split:
        keep = set(read_split_qids(d.split))
        reqs = [r for r in reqs if r.qid in keep]
    reqs = reqs[:d.max_queries] if d.max_queries else reqs
    qrels = read_qrels(d.qrels)
    return reqs, {r.qid: qrels[r.qid] for r in reqs if r.qid in qrels}


def dataset_cache(d: DatasetSpec) -> list:
    """The dataset's `embeddings` caches (loaded and verified; [] without any); their documents must
    have been encoded in the title format the dataset reads them with."""
    name = d.name
    paths = [d.embeddings] if isinstance(d.embeddings, str) else list(d.embeddings or [])
    from perank_jax.data.embcache import load_embedding_cache
    caches = []
    for path in paths:
        cache = load_embedding_cache(path, verify="lazy")
        beir = cache.title_format
        if beir != d.title_format:
            raise ConfigError(f"dataset {name}: embeddings {path} were encoded "
                              f"{'with' if beir else 'without'} BEIR titles (perank encode --title-format "
                              f"{'beir' if beir else 'plain'}); set the dataset's title_format: {str(beir).lower()} "
                              "so passages encoded on the fly match them")
        caches.append(cache)
    return caches


def read_split(path) -> dict[str, list[str]]:
    """A query split file (configs/splits/*.json): {part: [qid, ...]} for every list-valued key
    (other keys, e.g. "about", are notes); the parts must be non-empty and disjoint."""
    try:
        raw = json.loads(Path(path).read_text())
        parts = {k: [str(q) for q in v] for k, v in raw.items() if isinstance(v, list)}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"{path}: not a query split file ({type(e).__name__}: {e})") from None
    if not parts or not all(parts.values()):
        raise ConfigError(f"{path}: a split file needs non-empty lists of qids, got keys {sorted(raw)}")
    seen: dict[str, str] = {}
    for k, qids in parts.items():
        both = [q for q in qids if q in seen]
        if both:
            raise ConfigError(f"{path}: queries in both {seen[both[0]]!r} and {k!r}: {both[:5]}")
        seen.update((q, k) for q in qids)
    return parts


def read_split_qids(spec: str) -> list[str]:
    """The qids of one part of a split file named as "path.json:part"."""
    path, sep, key = spec.rpartition(":")
    if not sep or not path:
        raise ConfigError(f"split {spec!r}: expected 'file.json:part'")
    parts = read_split(path)
    if key not in parts:
        raise ConfigError(f"{path}: no split {key!r} (has {sorted(parts)})")
    return parts[key]
