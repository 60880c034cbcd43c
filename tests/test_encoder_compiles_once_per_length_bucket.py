"""Encoding compiles once per length bucket (fixed batch shape, last batch padded), and padding
(bucket length, empty filler rows, batch neighbours) never changes a text's embedding."""
import numpy as np
import pytest

import perank_jax
from perank_jax.core.buckets import length_buckets
from perank_jax.models.dense import DenseEncoder
from fixtures import tiny_bert


@pytest.fixture(scope="module")
def enc(tmp_path_factory, minilm_dir):
    d = tmp_path_factory.mktemp("bert")
    tiny_bert(d, minilm_dir)
    return perank_jax.load_encoder(d, max_length=100)


def _texts(rng, n, max_words=40):
    words = "query passage rank dense vector token model search answer retrieval".split()
    return [" ".join(rng.choice(words, rng.integers(1, max_words))) for _ in range(n)]


def test_length_buckets_are_powers_of_two_and_midpoints_up_to_max_length():
    assert length_buckets(512) == (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
    assert length_buckets(100) == (16, 24, 32, 48, 64, 96, 100)
    assert length_buckets(8) == (8,)


def test_encode_compiles_once_per_bucket_not_per_batch(enc):
    fresh = DenseEncoder(enc.config, enc.model, enc.tokenizer, max_length=100)   # its own jit cache
    rng = np.random.default_rng(0)
    texts = _texts(rng, 61)                               # 16 batches of 4, the last one padded
    used = {fresh.bucket(len(x)) for x in fresh.tokenize(texts)}
    e = fresh.encode(texts, batch_size=4)
    assert e.shape == (61, fresh.dim)
    assert fresh.traces.count == len(used) and len(used) < 16
    more = _texts(rng, 29)
    used |= {fresh.bucket(len(x)) for x in fresh.tokenize(more)}
    fresh.encode(more, batch_size=4)                      # new texts: only new buckets trace
    fresh.encode(texts[:3], batch_size=4)
    assert fresh.traces.count == len(used)


def test_padding_never_changes_a_text_embedding(enc):
    text = "dense passage retrieval"
    alone = enc.encode([text], batch_size=4)[0]           # bucket 16, 3 empty filler rows
    crowd = enc.encode(["rank " * 95, text, "model " * 40], batch_size=4)   # bucket 100
    assert np.abs(crowd[1] - alone).max() < 1e-6
    assert np.allclose(np.linalg.norm(crowd, axis=1), 1, atol=1e-6)


def test_order_of_results_follows_input_order(enc):
    texts = [t[:60] for t in _texts(np.random.default_rng(1), 11)]   # short texts: small buckets
    e = enc.encode(texts, batch_size=4)
    rev = enc.encode(texts[::-1], batch_size=4)[::-1]
    assert np.abs(e - rev).max() < 1e-6
