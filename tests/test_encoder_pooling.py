"""Pooling modes (masked mean, CLS, last real token, L2) and the default pooling read from a
model directory's sentence-transformers config."""
import json

import numpy as np
import pytest

from perank_jax.models.encoder import EncoderError
from perank_jax.models.pooling import l2_normalize, pool
from perank_jax.weights.encoder import pooling_from_dir


def test_pool_modes_use_only_real_tokens():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((3, 6, 4)).astype(np.float32)
    lengths = [6, 3, 1]
    mask = np.arange(6)[None, :] < np.asarray(lengths)[:, None]
    mean = np.asarray(pool(h, mask, "mean"))
    cls = np.asarray(pool(h, mask, "cls"))
    last = np.asarray(pool(h, mask, "last"))
    for b, n in enumerate(lengths):
        assert np.allclose(mean[b], h[b, :n].mean(0), atol=1e-6)
        assert np.array_equal(cls[b], h[b, 0])
        assert np.array_equal(last[b], h[b, n - 1])
    n = np.asarray(l2_normalize(mean))
    assert np.allclose(np.linalg.norm(n, axis=1), 1, atol=1e-6)
    assert np.array_equal(np.asarray(l2_normalize(np.zeros((1, 4), np.float32))), np.zeros((1, 4)))


@pytest.mark.parametrize("flags,want", [({"pooling_mode_cls_token": True}, "cls"),
                                        ({"pooling_mode_mean_tokens": True}, "mean"),
                                        ({"pooling_mode_lasttoken": True}, "last")])
def test_default_pooling_comes_from_the_sentence_transformers_config(tmp_path, flags, want):
    (tmp_path / "modules.json").write_text(json.dumps(
        [{"idx": 1, "name": "1", "path": "pool", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "config.json").write_text(json.dumps({"word_embedding_dimension": 8, **flags}))
    assert pooling_from_dir(tmp_path, {}) == want


def test_default_pooling_without_config_is_emb_pooler_then_mean(tmp_path):
    assert pooling_from_dir(tmp_path, {"emb_pooler": "mean"}) == "mean"
    assert pooling_from_dir(tmp_path, {}) == "mean"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(EncoderError, match="unsupported"):
        pooling_from_dir(tmp_path, {})
