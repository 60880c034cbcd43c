"""`perank tables CONFIG.yaml`: the paper's Table 2 (nDCG@10 per dataset x method) and
Table 3 (latency, processed tokens, generated tokens at several candidate depths) from
configured datasets and methods, as markdown, JSON and a latency-vs-candidates PNG.

Methods (kind):
  first_stage   the first-stage order itself
  embedding     cosine of the encoder's query and passage embeddings (no LLM)
  textlist      the text-listwise baseline (evaluate/textlist.py) on the JAX decoder
  perank        PERanker (a checkpoint, or `decoder` + `encoder` with an untrained projector)
Every method reranks the same top-`depth` candidates of the same queries with the same
sliding windows. A dataset's `embeddings` cache serves Table 2 (quality) to every method whose
encoder made it; the others, and Table 3, encode on the fly. Latency is wall time per query with encoding included and XLA compile
time excluded (reported apart as compile_s); the first query of each (method, depth) is
run once untimed as a warm-up.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from perank_jax.core.atomic import atomic_text, atomic_write
from perank_jax.core.config import SEED, ConfigError, Field, setting
from perank_jax.core.config_files import load_yaml
from perank_jax.core.constants import DECODE_MODES
from perank_jax.core.outputs import claim_dir, mark_dir
from perank_jax.models.projector import check_projector
from perank_jax.weights.perank_config import PERANK_RULES
from perank_jax.listwise.windows import STRIDE, TOP_K, WINDOW, check_windows
from perank_jax.data.trec_write import write_run
from perank_jax.evaluate.accounting import QueryCost, Usage, as_dicts, summarize, timed
from perank_jax.evaluate.datasets import DatasetSpec, dataset_cache, load_dataset
from perank_jax.evaluate.metrics import evaluate
from perank_jax.listwise.feedback import QUERY_FEEDBACK, feedback_query
from perank_jax.core.interrupts import check_interrupt
from perank_jax.weights.packaged import resolve_model_path

KINDS = ("first_stage", "embedding", "textlist", "perank")


COUNT = Field(int, None, 1)           # depths, query counts, token counts: >= 1


@dataclass
class MethodSpec:
    name: str
    kind: str = Field(str, choices=KINDS).setting(required=True)
    encoder: str | None = None       # embedding, perank
    decoder: str | None = None       # textlist; perank without checkpoint (untrained projector)
    checkpoint: str | None = None    # perank
    mode: str = setting(str, "decode", choices=DECODE_MODES)   # perank: decode | single_pass
    top_k: int | None = TOP_K.setting()   # perank: decode only the top k of each window
    projector: str = "mlp2x_gelu"    # untrained perank projector: a registered name or "pkg.module:Class"
    projector_options: dict | None = None   # its typed options (perank_jax.models.projector)
    seed: int = SEED.setting()
    max_new_tokens: int = COUNT.setting(256)   # textlist (the reference used 256)
    max_words: int | None = COUNT.setting()    # textlist passage truncation (None: as the reference)
    dtype: str = "float32"
    max_length: int | None = PERANK_RULES["encoder_max_length"].setting(None)   # embedding: encoder tokens per
                                               # text (None: the encoder's maximum)
    query_scale: float | None = PERANK_RULES["query_scale"].setting(None)   # perank checkpoint with a query
                                               # token: instead of its config.json's
    query_feedback: list[float] | None = QUERY_FEEDBACK.setting(None)   # [weight, temperature] of the candidate-aware query vector
                                               # (perank_jax.listwise.feedback): embedding, or perank with a checkpoint


@dataclass
class TablesConfig:
    datasets: list[DatasetSpec]
    methods: list[MethodSpec]
    depth: int = COUNT.setting(100)           # Table 2: rerank the top-`depth` candidates
    efficiency_dataset: str | None = None     # Table 3 dataset (default: the first)
    efficiency_depths: list[int] = setting(list, [20, 100], 1, items=int)
    efficiency_queries: int | None = COUNT.setting()   # Table 3: the first N queries (None: the dataset's)
    window: int = WINDOW.setting()            # 0: one window over all candidates
    stride: int = STRIDE.setting()
    measure: str = "nDCG@10"
    warmup: bool = True                       # run each (method, depth)'s first query once untimed
    batch_queries: int = COUNT.setting(1)     # Table 2: PE-Rank methods rerank this many queries at once
    out_dir: str = "tables_out"
    write_runs: bool = True


def load_config(path, overrides=None) -> TablesConfig:
    """The tables config at `path` (+ `key=value` overrides): each field checked by its rule (`setting`),
    then the rules between fields, each one ConfigError naming the file and key."""
    cfg = load_yaml(TablesConfig, path, overrides)
    if not cfg.datasets or not cfg.methods:
        raise ConfigError(f"{path}: needs at least one dataset and one method")
    check_windows(cfg.window, cfg.stride, ("window", f"{path}: stride"), ConfigError)
    names = [m.name for m in cfg.methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: method names must be unique, got {names}")
    for i, m in enumerate(cfg.methods):
        where = f"{path}: methods[{i}] ({m.name})"
        if m.kind == "embedding" and not m.encoder:
            raise ConfigError(f"{where}: kind embedding needs `encoder`")
        if m.kind == "textlist" and not m.decoder:
            raise ConfigError(f"{where}: kind textlist needs `decoder`")
        if m.kind == "perank" and not (m.checkpoint or (m.decoder and m.encoder)):
            raise ConfigError(f"{where}: kind perank needs `checkpoint`, or `decoder` and `encoder`")
        if m.query_scale is not None and not (m.kind == "perank" and m.checkpoint):
            raise ConfigError(f"{where}: query_scale needs kind perank with a `checkpoint`")
        if m.query_feedback is not None:
            if not (m.kind == "embedding" or (m.kind == "perank" and m.checkpoint)):
                raise ConfigError(f"{where}: query_feedback needs kind embedding, or perank with a `checkpoint`")
        try:
            if m.kind == "perank" and not m.checkpoint:
                check_projector(m.projector, m.projector_options, f"{where}: projector_options")
        except ValueError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    for i, d in enumerate(cfg.datasets):
        if not d.requests and not (d.queries and d.run and d.corpus):
            raise ConfigError(f"{path}: datasets[{i}] ({d.name}) needs `requests`, or `queries`, `run` and `corpus`")
    if cfg.efficiency_dataset and cfg.efficiency_dataset not in [d.name for d in cfg.datasets]:
        raise ConfigError(f"{path}: efficiency_dataset {cfg.efficiency_dataset!r} is not a configured dataset")
    return cfg


# --- methods: (query, texts) -> (order, Usage) ----------------------------------------------
class Methods:
    """Builds each configured method once, sharing loaded models between methods."""

    def __init__(self, cfg: TablesConfig):
        self.cfg, self._cache = cfg, {}
        self.embedding_memos: dict | None = None  # Table 2 only: one text -> vector memo per encoder
        self.embedding_caches = []                # the dataset's EmbeddingCaches, during Table 2 only
        self.log = print

    def _load(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def memo_for(self, encoder) -> dict | None:
        """The dataset's text -> vector memo of this encoder setting (methods that encode alike
        share it; None outside Table 2)."""
        if self.embedding_memos is None:
            return None
        from perank_jax.inference.passage_vectors import encoder_identity
        return self.embedding_memos.setdefault(encoder_identity(encoder), {})

    def encoder(self, path, max_length: int | None = None):
        from perank_jax.weights.encoder import load_encoder
        kw = {"max_length": max_length} if max_length else {}
        return self._load(("enc", path, max_length), lambda: load_encoder(resolve_model_path(path), **kw))

    def decoder(self, path, dtype):
        from perank_jax.weights.decoder import load_decoder
        return self._load(("dec", path, dtype), lambda: load_decoder(resolve_model_path(path), dtype=dtype))

    def build(self, m: MethodSpec):
        cfg = self.cfg
        if m.kind == "first_stage":
            return lambda q, cands: (list(range(len(cands))), Usage())
        if m.kind == "embedding":
            from perank_jax.inference.passage_vectors import passage_vectors
            enc = self.encoder(m.encoder, m.max_length)

            def cosine(q, cands):
                cache = self.usable_cache(m.name, enc, None, enc.dim)
                memo = self.memo_for(enc)
                (e,), *_ = passage_vectors(enc, [[c.text for c in cands]], [[c.docid for c in cands]], cache,
                                           memo, [q])
                e = np.asarray(e, np.float64)
                e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
                qv = feedback_query(e[-1], e[:-1], *m.query_feedback) if m.query_feedback else e[-1]
                return [int(i) for i in np.argsort(-(e[:-1] @ qv), kind="stable")], Usage()
            return cosine
        if m.kind == "textlist":
            from perank_jax.evaluate.textlist import TextListwiseReranker
            r = TextListwiseReranker(self.decoder(m.decoder, m.dtype), cfg.window, cfg.stride,
                                     m.max_new_tokens, m.max_words)
            return lambda q, cands: r.rerank(q, [c.text for c in cands])
        ranker = self._load(("perank", m.name), lambda: self._perank(m))

        def use_dataset_state():
            ranker.embedding_memo = self.memo_for(ranker.encoder)
            ranker.embeddings = self.usable_cache(m.name, ranker.encoder, ranker.config, int(ranker.projector.in_dim))

        def perank(q, cands):
            use_dataset_state()
            order = ranker.rerank(q, list(cands), window=cfg.window, stride=cfg.stride, top_k=m.top_k, mode=m.mode)
            st = ranker.last_stats[0]
            return order, Usage(st.processed_tokens, st.generated_tokens, st.windows)

        def batch(queries, cand_lists):
            use_dataset_state()
            orders = ranker.rerank_batch(list(queries), [list(t) for t in cand_lists], window=cfg.window,
                                         stride=cfg.stride, top_k=m.top_k, mode=m.mode)
            return orders, [Usage(st.processed_tokens, st.generated_tokens, st.windows) for st in ranker.last_stats]
        perank.batch = batch
        return perank

    def usable_cache(self, method: str, encoder, config, dim: int):
        """The dataset's embedding cache that `encoder` made, else None (the method then encodes on
        the fly, as it must: another encoder's vectors would rank wrongly). Checked (encoder weights
        fingerprinted) once per method and cache, not per query; no match is said once."""
        key = ("cache usable", method, tuple(str(c.directory) for c in self.embedding_caches))
        if key not in self._cache:
            from perank_jax.inference.passage_vectors import EmbeddingMismatch, check_cache_matches
            self._cache[key], why = None, []
            for cache in self.embedding_caches:
                try:
                    check_cache_matches(cache, encoder, config, dim)
                    self._cache[key] = cache
                    break
                except EmbeddingMismatch as e:
                    why.append(str(e))
            if self._cache[key] is None and why:
                self.log(f"[tables] {method}: encodes on the fly, not from a cache ({'; '.join(why)})")
        return self._cache[key]

    def _perank(self, m: MethodSpec):
        from perank_jax.inference.ranker import PERanker
        if m.checkpoint:
            return PERanker.from_pretrained(resolve_model_path(m.checkpoint), resolve_model_path(m.encoder),
                                            dtype=m.dtype, query_scale=m.query_scale,
                                            query_feedback=m.query_feedback)
        import jax.numpy as jnp
        from flax import nnx
        from perank_jax.models.projector import build_projector
        dec, enc = self.decoder(m.decoder, m.dtype), self.encoder(m.encoder)
        proj = build_projector(m.projector, enc.dim, dec.config.hidden_size, m.projector_options,
                               rngs=nnx.Rngs(m.seed), dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.dtype))
        return PERanker(dec, proj, dec.tokenizer, enc)


def rerank_all(method, requests, depth: int, warmup: bool = True, batch_queries: int = 1):
    """Run one method over the top-`depth` candidates of each request: (run, costs). Methods with
    a `.batch` entry (PE-Rank) take `batch_queries` queries at a time; each query's latency is
    then the batch's wall time divided by the queries in it."""
    if not requests:
        return {}, []
    if warmup:  # compiles and fills caches; untimed (compile time is excluded from latency anyway)
        method(requests[0].query, requests[0].candidates[:depth])
    step = batch_queries if batch_queries > 1 and hasattr(method, "batch") else 1
    run, costs = {}, []
    for lo in range(0, len(requests), step):
        check_interrupt()                 # a Ctrl-C whose KeyboardInterrupt Python dropped
        chunk = requests[lo:lo + step]
        texts = [r.candidates[:depth] for r in chunk]   # Candidates: docid (for a cache) and text
        if step == 1:
            order, cost = timed(chunk[0].qid, len(texts[0]), method, chunk[0].query, texts[0])
            pairs = [(order, cost)]
        else:
            orders, cost = timed("batch", 0, lambda: _joint(method.batch([r.query for r in chunk], texts)))
            k = len(chunk)
            pairs = [(o, QueryCost(r.qid, len(t), cost.latency_s / k, cost.compile_s / k, int(u.processed_tokens),
                                   int(u.generated_tokens), int(u.windows)))
                     for r, t, o, u in zip(chunk, texts, orders[0], orders[1])]
        for r, (order, cost) in zip(chunk, pairs):
            cands = r.candidates[:depth]
            if sorted(order) != list(range(len(cands))):
                raise ValueError(f"query {r.qid}: the method returned {order}, not a permutation")
            run[r.qid] = [cands[i].docid for i in order] + [c.docid for c in r.candidates[depth:]]
            costs.append(cost)
    return run, costs


def _joint(result):
    """(orders, usages) -> ((orders, usages), Usage()) so `timed` can time a batch call."""
    return result, Usage()


# --- the tables -----------------------------------------------------------------------------
TABLES_OUTPUTS = ("tables.md", "tables.json", "latency_vs_candidates.png", "runs")


def run_tables(cfg: TablesConfig, log=print) -> dict:
    out = claim_dir(cfg.out_dir, "tables", TABLES_OUTPUTS, mark=False)   # a user's tables.md is never replaced
    caches = {d.name: dataset_cache(d) for d in cfg.datasets}     # a bad cache fails before any work
    methods = Methods(cfg)
    methods.log = log
    built = {m.name: methods.build(m) for m in cfg.methods}
    data = {d.name: load_dataset(d) for d in cfg.datasets}
    eff_name = cfg.efficiency_dataset or cfg.datasets[0].name
    quality: dict = {m.name: {} for m in cfg.methods}
    efficiency: dict = {m.name: {} for m in cfg.methods}
    per_query_costs: dict = {}
    for dname, (reqs, qrels) in data.items():
        # Table 2 measures quality: PE-Rank modes share one dataset's passage embeddings (Table 3's
        # latency runs below encode afresh, as the paper counts it)
        table3_here = (dname == eff_name and cfg.efficiency_queries is None and cfg.batch_queries == 1
                       and cfg.depth in cfg.efficiency_depths)
        methods.embedding_memos = None if table3_here else {}
        methods.embedding_caches = [] if table3_here else caches[dname]
        for m in cfg.methods:
            log(f"[tables] {dname}: {m.name} on top-{cfg.depth} of {len(reqs)} queries")
            run, costs = rerank_all(built[m.name], reqs, cfg.depth, cfg.warmup, cfg.batch_queries)
            quality[m.name][dname] = evaluate(qrels, run, [cfg.measure]).aggregate[cfg.measure]
            per_query_costs[f"{dname}/{m.name}/top{cfg.depth}"] = as_dicts(costs)
            if cfg.write_runs:
                mark_dir(out, "tables")
                write_run(run, out / "runs" / f"{dname}.{m.name.replace('/', '_')}.top{cfg.depth}.trec",
                          tag=m.name.replace(" ", "_"))
            if table3_here:
                efficiency[m.name][cfg.depth] = summarize(costs)
    methods.embedding_memos, methods.embedding_caches = None, []
    eff_reqs = data[eff_name][0][:cfg.efficiency_queries] if cfg.efficiency_queries else data[eff_name][0]
    for depth in cfg.efficiency_depths:
        for m in cfg.methods:
            if depth not in efficiency[m.name]:
                log(f"[tables] {eff_name}: {m.name} efficiency at top-{depth} on {len(eff_reqs)} queries")
                _, costs = rerank_all(built[m.name], eff_reqs, depth, cfg.warmup)
                efficiency[m.name][depth] = summarize(costs)
                per_query_costs[f"{eff_name}/{m.name}/top{depth}"] = as_dicts(costs)
    result = {"config": asdict(cfg), "measure": cfg.measure, "quality": quality,
              "efficiency_dataset": eff_name, "efficiency": efficiency,
              "queries": {d: len(r) for d, (r, _) in data.items()}, "per_query_costs": per_query_costs}
    result["table2"] = table2_markdown(result)
    result["table3"] = table3_markdown(result)
    mark_dir(out, "tables")
    atomic_text(out / "tables.json", json.dumps(result, indent=1, default=float))
    atomic_text(out / "tables.md", result["table2"] + "\n\n" + result["table3"] + "\n")
    plot_latency(result, out / "latency_vs_candidates.png")
    return result


def table2_markdown(res: dict) -> str:
    quality, datasets = res["quality"], list(res["queries"])
    head = ["Method", *[f"{d} ({res['queries'][d]} q)" for d in datasets], "Avg"]
    rows = [_md_row(head), _md_row(["---"] * len(head))]
    for name, vals in quality.items():
        v = [vals[d] for d in datasets]
        rows.append(_md_row([name, *[f"{x:.4f}" for x in v], f"{float(np.mean(v)):.4f}"]))
    return f"Table 2: {res['measure']} (top-{res['config']['depth']} reranked)\n\n" + "\n".join(rows)


def table3_markdown(res: dict) -> str:
    eff = res["efficiency"]
    depths = sorted({d for v in eff.values() for d in v})
    if not depths:
        return "Table 3: not measured (efficiency_depths is empty)"
    head = ["Method"] + [f"top-{d} {c}" for d in depths for c in ("latency (s)", "processed tok", "generated tok")]
    rows = [_md_row(head), _md_row(["---"] * len(head))]
    for name, by_depth in eff.items():
        cells = [name]
        for d in depths:
            s = by_depth[d]
            cells += [f"{s['latency_s']:.3f}", f"{s['processed_tokens']:.0f}", f"{s['generated_tokens']:.0f}"]
        rows.append(_md_row(cells))
    comp = "; ".join(f"{n}: {sum(s.get('compile_s_total', 0.0) for s in v.values()):.1f}s" for n, v in eff.items())
    nq = next(iter(next(iter(eff.values())).values()))["queries"]
    return (f"Table 3: efficiency on {res['efficiency_dataset']} ({nq} queries; mean per query; latency "
            f"excludes compile time)\n\n" + "\n".join(rows) + f"\n\ncompile time (excluded above): {comp}")


def plot_latency(res: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, by_depth in res["efficiency"].items():
        ds = sorted(by_depth)
        ax.plot(ds, [by_depth[d]["latency_s"] for d in ds], marker="o", label=name)
    ax.set_xlabel("number of candidates")
    ax.set_ylabel("latency per query (s)")
    ax.set_title(f"Latency vs candidates ({res['efficiency_dataset']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    plt.close(fig)
    return path


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


