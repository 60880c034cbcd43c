"""Layer 5, evaluation: metrics, the BM25 first stage, the text-listwise baseline and the paper's tables.

    metrics     nDCG / recall / MRR with ir_measures, paired tests, the metrics table
    bm25        BM25 first stage over a local corpus (`perank retrieve`)
    textlist    the text-listwise baseline (RankGPT / RankMistral style)
    accounting  per-query latency with compile time taken out, processed / generated tokens
    datasets    what a tables config names: requests, qrels, query splits, embedding caches
    tables      `perank tables`: load_config (a tables YAML), run_tables (Table 2 and Table 3)
"""
from perank_jax.evaluate.bm25 import bm25_run
from perank_jax.evaluate.datasets import DatasetSpec, load_dataset, read_split, read_split_qids
from perank_jax.evaluate.metrics import DEFAULT_MEASURES, Evaluation, PairedTest, evaluate, format_table, paired_test
from perank_jax.evaluate.tables import TablesConfig, load_config, run_tables
from perank_jax.evaluate.textlist import TextListwiseReranker

__all__ = [
    "bm25_run", "DatasetSpec", "load_dataset", "read_split", "read_split_qids",
    "DEFAULT_MEASURES", "Evaluation", "PairedTest", "evaluate", "format_table", "paired_test",
    "TablesConfig", "load_config", "run_tables", "TextListwiseReranker",
]
