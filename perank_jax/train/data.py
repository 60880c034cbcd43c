"""The training data pipeline for both stages.

reference JSONL (one JSON object per line; `read_jsonl`, each record remembering its line)
-> validate every record (before any step runs; errors name file:line and field)
-> tokenise with the chat template -> embed the unique passage texts once (frozen
encoder, embedding cache or a precomputed table) -> fixed-shape numpy batches padded to
length buckets, in a deterministic order from a seed, each process taking its own rows.

Record formats (the reference's):
  stage 1: {"messages": [{"role", "content"}, ...], "extra_texts": [passage, ...]}
           one <PLACEHOLDER> per extra text; loss on the assistant turn's tokens.
  stage 2: {"messages_wo_content": [...], "messages_w_content": [...] (optional),
            "ranking": [...], "extra_texts": [...]}
           the assistant turn becomes n <RANK> slots; `ranking` is the teacher's order
           (passage indices, 0- or 1-based, a permutation).
  either stage may carry "query_text": the query, whose encoder vector a projector with
  `uses_query` receives; in stage 2 it also fills the query slot (model.query_token).
With a projector of k tokens per passage, every <PLACEHOLDER> of a record becomes k
(prompts.expand_placeholders, as at inference).

Under multi-host training every process prepares (and so validates) all records, and each
feeds only its contiguous share of every global batch (`process_rows`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from perank_jax.core.buckets import smallest_fitting
from perank_jax.data.trec import DataError
from perank_jax.models.perank import list_inputs
from perank_jax.listwise.prompts import PLACEHOLDER, RANK, expand_placeholders, render_messages
VIEWS = {"wo": "messages_wo_content", "w": "messages_w_content"}


def perank_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of <PLACEHOLDER> and <RANK> (added as special tokens if the tokenizer lacks them)."""
    from perank_jax.listwise.prompts import add_special_tokens
    return add_special_tokens(tokenizer)


# ----------------------------------------------------------------------------- reading
class Record(dict):
    """One training record (a JSON object) that remembers the file and line it came from."""

    def __init__(self, data=(), source: str = "", line: int | None = None):
        super().__init__(data)
        self.source, self.line = source, line


def read_jsonl(path: str | Path) -> list[Record]:
    """The records of a JSONL file (order = line order; blank lines skipped), each a `Record`
    that knows its line. Bad input raises DataError naming the file and line: bytes that are
    not UTF-8, a line that is not one JSON object, or a file without records."""
    import json
    from perank_jax.data import trec
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: training data file not found")
    records = []
    try:
        for i, line in trec.iter_text_lines(path):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno}); "
                                "each line must be one JSON object") from None
            except (ValueError, RecursionError):        # a > 4300-digit integer, nesting too deep
                raise DataError(f"{path}:{i}: not usable JSON (a number too long or nesting too deep)") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
            records.append(Record(rec, str(path), i))
    except trec.DataError as e:
        raise DataError(str(e)) from None
    if not records:
        raise DataError(f"{path}: no records (empty file)")
    return records


# ----------------------------------------------------------------------------- tokenising
@dataclass
class Tokenised:
    ids: np.ndarray           # [L] int32, the chat-templated conversation
    ph_pos: np.ndarray        # [slots * k] positions of <PLACEHOLDER> in order
    rank_pos: np.ndarray      # [n] positions of <RANK> slots (stage 2)
    label_mask: np.ndarray    # [L] bool, True on assistant-turn tokens (stage 1)


def _tokenise(tokenizer, messages, ph_id, rank_id, want_labels: bool, per_slot: int = 1) -> Tokenised:
    text = render_messages(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=want_labels)
    ids = np.asarray(enc["input_ids"], np.int32)
    label_mask = np.zeros(len(ids), bool)
    if want_labels:
        start = None
        for k in range(len(messages)):
            if messages[k]["role"] != "assistant":
                continue
            prefix = render_messages(tokenizer, messages[:k], add_generation_prompt=True)
            end = render_messages(tokenizer, messages[:k + 1])
            if not text.startswith(prefix) or not text.startswith(end):
                raise ValueError("the chat template does not render turns as prefixes of the conversation")
            offs = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
            label_mask |= (offs[:, 0] >= len(prefix)) & (offs[:, 0] < len(end)) & (offs[:, 1] > offs[:, 0])
            start = len(prefix)
        if start is None or not label_mask.any():
            raise ValueError("no assistant-turn tokens to learn from")
    ids, label_mask = expand_placeholders(ids, ph_id, per_slot, label_mask)
    return Tokenised(ids, np.flatnonzero(ids == ph_id).astype(np.int32),
                     np.flatnonzero(ids == rank_id).astype(np.int32), label_mask)


def _rank_messages(messages, n, query_token: bool = False):
    """The reference's stage-2 conversation: the assistant turn is n <RANK> slots (after the
    query's own placeholder when the record has a `query_text`)."""
    from perank_jax.listwise.prompts import assistant_prefix
    msgs = [dict(m) for m in messages]
    content = assistant_prefix(query_token) + RANK * n
    if msgs and msgs[-1]["role"] == "assistant":
        msgs[-1]["content"] = content
    else:
        msgs.append({"role": "assistant", "content": content})
    return msgs


# ----------------------------------------------------------------------------- preparing
@dataclass
class Prepared:
    """Validated, tokenised records and the embedding table of their passages."""
    stage: int
    views: dict[str, list[Tokenised]]        # stage 1: {"main": ...}; stage 2: {"wo": ..., "w": ...}
    text_idx: list[np.ndarray]                # per record: rows of `table`
    rankings: list[np.ndarray]                # stage 2: 0-based permutations
    table: np.ndarray                         # [U, d] float32 passage embeddings
    source: str = ""
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    n_passages: list[int] = field(default_factory=list)   # per record; text_idx may add the query's row
    query_token: bool = False                 # stage 2 prompts hold the query's slot (row n_b of text_idx)
    query_idx: list[int] = field(default_factory=list)    # per record: the query's row of `table` (records
                                                          # with `query_text`), else empty
    tokens_per_passage: int = 1               # k placeholders per slot

    def __len__(self):
        return len(self.text_idx)


def _check_messages(messages, where):
    if messages is None:
        raise ValueError(f"missing field {where} (a non-empty list of {{'role', 'content'}} messages)")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"field {where} must be a non-empty list of messages")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"field {where}[{j}] is not a message with string 'role' and 'content'")


def prepare(records: Sequence[dict], tokenizer, stage: int, embed: Callable[[list[str]], np.ndarray],
            max_len: int, max_passages: int, use_content_view: bool = True, source: str = "data",
            tokens_per_passage: int = 1, query_slot: bool | None = None) -> Prepared:
    """Validate and tokenise every record, then embed; raises DataError naming the first bad records.
    tokens_per_passage: the projector's k. query_slot: whether stage-2 prompts get the query's slot
    (None: when the records carry `query_text`)."""
    ph_id, rank_id = perank_token_ids(tokenizer)
    views: dict[str, list[Tokenised]] = {"main": []} if stage == 1 else {"wo": []}
    if stage == 2 and use_content_view:
        views["w"] = []
    errors: list[str] = []
    texts: dict[str, int] = {}
    text_idx, rankings, owners, n_passages, query_idx = [], [], {}, [], []
    query_token, slot = None, False

    for i, rec in enumerate(records):
        line = getattr(rec, "line", None) or i + 1
        try:
            if not isinstance(rec, dict):
                raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
            extra = rec.get("extra_texts")
            if extra is None:
                raise ValueError("missing field 'extra_texts' (a non-empty list of passage strings)")
            if not isinstance(extra, list) or not extra or not all(isinstance(t, str) for t in extra):
                raise ValueError("field 'extra_texts' must be a non-empty list of strings")
            n = len(extra)
            if n > max_passages:
                raise ValueError(f"{n} extra_texts exceed max_passages={max_passages}")
            q_text = rec.get("query_text")
            if q_text is not None and (not isinstance(q_text, str) or not q_text.strip()):
                raise ValueError("'query_text' must be a non-empty string")
            if query_token is None:
                query_token = q_text is not None
            if (q_text is not None) != query_token:
                raise ValueError("'query_text' must be present in every record or in none")
            slot = stage == 2 and q_text is not None and query_slot is not False
            slots = n + (1 if slot else 0)
            toks = {}
            if stage == 1:
                _check_messages(rec.get("messages"), "'messages'")
                toks["main"] = _tokenise(tokenizer, rec["messages"], ph_id, rank_id, want_labels=True,
                                         per_slot=tokens_per_passage)
            else:
                ranking = rec.get("ranking")
                if ranking is None:
                    raise ValueError("missing field 'ranking' (the teacher's order of the extra_texts)")
                if not isinstance(ranking, list) or not all(isinstance(r, int) and not isinstance(r, bool)
                                                            for r in ranking):
                    raise ValueError("field 'ranking' must be a list of ints")
                r = np.asarray(ranking, np.int64)
                if len(r) and r.min() == 1 and sorted(r.tolist()) == list(range(1, n + 1)):
                    r = r - 1                                  # the reference's 1-based rankings
                if sorted(r.tolist()) != list(range(n)):
                    raise ValueError(f"ranking {ranking} is not a permutation of the {n} extra_texts")
                for v in views:
                    _check_messages(rec.get(VIEWS[v]), repr(VIEWS[v]))
                    toks[v] = _tokenise(tokenizer, _rank_messages(rec[VIEWS[v]], n, slot),
                                        ph_id, rank_id, False, tokens_per_passage)
                    if len(toks[v].rank_pos) != n:
                        raise ValueError(f"{VIEWS[v]}: {len(toks[v].rank_pos)} {RANK} tokens after templating, "
                                         f"expected {n} (does the prompt itself contain {RANK}?)")
                rankings.append(r.astype(np.int32))
            for v, t in toks.items():
                name = "messages" if v == "main" else VIEWS[v]
                if len(t.ph_pos) != slots * tokens_per_passage:
                    raise ValueError(f"{name}: extra_texts count {n}{' + the query' if slots > n else ''} != "
                                     f"{len(t.ph_pos) // tokens_per_passage} {PLACEHOLDER} tokens")
                if len(t.ids) > max_len:
                    raise ValueError(f"{name}: over-long record, {len(t.ids)} tokens > max_len={max_len}")
        except ValueError as e:
            errors.append((line, i, str(e)))
            if len(errors) >= 10:
                break
            continue
        for v, t in toks.items():
            views[v].append(t)
        rows = []
        n_passages.append(n)
        for t in extra + ([q_text] if q_text is not None else []):
            if t not in texts:
                texts[t] = len(texts)
                owners[texts[t]] = (i, line)
            rows.append(texts[t])
        if q_text is not None:
            query_idx.append(rows[-1])
        text_idx.append(np.asarray(rows[:n + (1 if slot else 0)], np.int32))
    if errors:
        (line, i, first), rest = errors[0], errors[1:]
        more = (f"; {len(rest)}{'+' if len(errors) >= 10 else ''} more bad record(s): "
                + "; ".join(f"line {ln}: {m}" for ln, _, m in rest)) if rest else ""
        raise DataError(f"{source}:{line}: record {i} (line {line}): {first}{more}; nothing was trained "
                        "(fix or drop the bad records)")
    if not text_idx:
        raise DataError(f"{source}: no records (empty file)")

    table = np.asarray(embed(list(texts)), np.float32)
    if table.ndim != 2 or table.shape[0] != len(texts):
        raise DataError(f"{source}: the embedder returned shape {table.shape} for {len(texts)} texts")
    bad = np.flatnonzero(~np.isfinite(table).all(-1))
    if len(bad):
        recs = sorted({owners[int(b)] for b in bad})
        (i, line) = recs[0]
        raise DataError(f"{source}:{line}: record {i} (line {line}): non-finite passage embedding "
                        f"({len(bad)} passage(s) in {len(recs)} record(s), e.g. lines {[r[1] for r in recs[:5]]}); "
                        "nothing was trained (check the embedding source)")
    lengths = {v: np.asarray([len(t.ids) for t in ts]) for v, ts in views.items()}
    return Prepared(stage, views, text_idx, rankings, table, source, lengths, n_passages, bool(slot), query_idx,
                    tokens_per_passage)


# ----------------------------------------------------------------------------- order & batches
@dataclass(frozen=True)
class Order:
    """Deterministic batch order: epoch e is a permutation seeded by (seed, e); the last partial
    batch of an epoch is dropped. Batch `step` is a pure function of (seed, step)."""
    n_records: int
    global_batch: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return self.n_records // self.global_batch

    def indices(self, step: int) -> np.ndarray:
        if self.steps_per_epoch == 0:
            raise DataError(f"{self.n_records} records are fewer than one global batch of {self.global_batch}")
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_records)
        return perm[k * self.global_batch:(k + 1) * self.global_batch]


def process_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    """The rows of each global batch that this process feeds (contiguous, equal shares)."""
    if global_batch % process_count:
        raise DataError(f"global batch {global_batch} does not split over {process_count} processes")
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


def collate(prep: Prepared, idx: np.ndarray, buckets: Sequence[int], max_passages: int,
            seq_len: dict[str, int] | None = None, pad_id: int = 0,
            query_feedback: tuple[float, float] = (0.0, 0.01), query_vector: bool = False) -> dict[str, np.ndarray]:
    """Fixed-shape numpy batch of records `idx`. Sequence length per view: `seq_len[view]`, or the
    smallest bucket holding the longest record. Padded passages/positions are marked invalid
    (positions point one past the end, so scatters drop them). A record's encoder rows and query
    vector come from models.perank.list_inputs, as at inference: with a query slot and a
    feedback weight > 0, the slot holds the candidate-aware query over the record's passages.
    query_vector: add "query" [B, E], the vector a projector with `uses_query` receives."""
    if query_vector and not prep.query_idx:
        raise DataError(f"{prep.source}: the projector uses the query, but the records carry no 'query_text'")
    B, n = len(idx), max_passages + (1 if prep.query_token else 0)   # + the query's slot (never valid)
    d = prep.table.shape[1]
    emb = np.zeros((B, n, d), np.float32)
    query = np.zeros((B, d), np.float32)
    valid = np.zeros((B, n), bool)
    for r, i in enumerate(idx):
        m = prep.n_passages[i]
        q = prep.table[prep.query_idx[i]] if prep.query_idx else None
        rows, q = list_inputs(prep.table[prep.text_idx[i][:m]], q, slot=prep.query_token, feedback=query_feedback)
        emb[r, :len(rows)] = rows
        valid[r, :m] = True
        if q is not None:
            query[r] = q
    out = {"emb": emb, "valid": valid, **({"query": query} if query_vector else {})}
    if prep.stage == 2:
        ranking = np.zeros((B, n), np.int32)
        for r, i in enumerate(idx):
            ranking[r, :len(prep.rankings[i])] = prep.rankings[i]
        out["ranking"] = ranking
    for v, toks in prep.views.items():
        T = (seq_len or {}).get(v) or smallest_fitting(int(prep.lengths[v][idx].max()), buckets)
        ids = np.full((B, T), pad_id, np.int32)
        mask = np.zeros((B, T), bool)
        ph_pos = np.full((B, n * prep.tokens_per_passage), T, np.int32)   # positions (T = none), k per slot
        rank_pos = np.full((B, n), T, np.int32)
        labels = np.zeros((B, T), bool)
        for r, i in enumerate(idx):
            t = toks[i]
            L = len(t.ids)
            if L > T:
                raise DataError(f"{prep.source}: record {int(i)} has {L} tokens > sequence length {T}")
            ids[r, :L] = t.ids
            mask[r, :L] = True
            ph_pos[r, :len(t.ph_pos)] = t.ph_pos
            rank_pos[r, :len(t.rank_pos)] = t.rank_pos
            labels[r, :L] = t.label_mask
        special = np.zeros_like(mask)
        for pos in (ph_pos, rank_pos):
            rows = np.repeat(np.arange(B), pos.shape[1])
            keep = pos.reshape(-1) < T
            special[rows[keep], pos.reshape(-1)[keep]] = True
        pre = "" if v == "main" else f"{v}_"
        out[pre + "ids"] = np.where(special, pad_id, ids)   # overwritten positions: any valid id
        out[pre + "mask"] = mask
        out[pre + "ph_pos"] = ph_pos
        if prep.stage == 1:
            weights = np.concatenate([labels[:, 1:], np.zeros((B, 1), bool)], 1)
            targets = np.concatenate([ids[:, 1:], np.full((B, 1), pad_id, np.int32)], 1)
            out["targets"] = np.where(weights, targets, pad_id)            # only assistant tokens are targets
            out["weights"] = weights.astype(np.float32)
        else:
            out[pre + "rank_pos"] = rank_pos
    return out


def num_batches(prep: Prepared, global_batch: int, epochs: float) -> int:
    return max(1, int(math.floor(len(prep) // global_batch * epochs)))
