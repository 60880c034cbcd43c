"""The compact template with a query token: what training scores is what inference decodes.

A tiny random decoder and projector; one stage-2 record built by the training-record builder
(template "compact", query_token) is prepared and collated by the training pipeline, and the
same query and passages are reranked by PERanker (which builds its own prompt). Teacher-forced
on the ranking the ranker decoded, the training logits' masked argmax must reproduce that
ranking step by step, and their step-0 order must equal single-pass mode's order.
"""
from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from perank_jax.listwise import prompts
from perank_jax.data.training_records import listwise_record
from perank_jax.listwise.feedback import feedback_query
from perank_jax.models.projector import build_projector
from perank_jax.inference.ranker import PERanker
from perank_jax.train import data as D
from perank_jax.core.constants import MASKED
from perank_jax.models.perank import listwise_logits, project_lists, scale_query_slot
from perank_jax.weights.decoder import load_decoder

from fixtures import make_decoder_dir, make_tokenizer

QUERY = "w1 w2 about topic"
TEXTS = ["w3 w4 t0", "w5 t1 w6", "w7 w8 t2", "w9 w10 t3", "w11 w0 t0"]
DIM = 8


class TableEncoder:
    """Deterministic stand-in encoder: a fixed random vector per text."""
    dim = DIM

    def __init__(self):
        self.rows = {}

    def encode(self, texts, batch_size=32):
        rng = np.random.default_rng
        return np.stack([self.rows.setdefault(t, rng(list(t.encode())).normal(size=DIM).astype(np.float32))
                         for t in texts])


def decoder_dir(path, init_std):
    """A tiny random decoder directory whose word-level tokenizer knows the compact prompt and QUERY."""
    extra = prompts.compact_prompt("x", 2).replace(prompts.PLACEHOLDER, " ").split() + ["Query:", "Passages:"]
    return make_decoder_dir(path, make_tokenizer(extra_words=extra + QUERY.split()), hidden=32, layers=2,
                            init_std=init_std)


@pytest.fixture(scope="module", params=[(1.0, 0.0), (50.0, 0.0), (50.0, 1.0)],
                ids=["query_scale_1", "query_scale_50", "query_scale_50_feedback"])
def setup(tmp_path_factory, request):
    scale, weight = request.param
    d = decoder_dir(tmp_path_factory.mktemp("dec"), init_std=0.3)
    dec = load_decoder(d)
    proj = build_projector("mlp2x_gelu", DIM, 32, rngs=nnx.Rngs(3))
    enc = TableEncoder()
    ranker = PERanker(dec, proj, dec.tokenizer, enc, config={
        "prompt_template": "compact", "query_token": True, "query_scale": scale,
        "query_feedback_weight": weight, "query_feedback_temperature": 0.5})
    return dec, proj, enc, ranker


def _train_logits(setup, ranking):
    dec, proj, enc, _ = setup
    rec = listwise_record(QUERY, TEXTS, ranking, template="compact", query_token=True, content_view=False)
    assert rec["query_text"] == QUERY and "messages_w_content" not in rec
    prep = D.prepare([rec], dec.tokenizer, 2, enc.encode, max_len=128, max_passages=5, use_content_view=False)
    assert prep.query_token and prep.n_passages == [5]
    batch = D.collate(prep, np.array([0]), [128], 5, query_feedback=setup[3].feedback)
    assert batch["emb"].shape[1] == 6 and batch["valid"][0].tolist() == [True] * 5 + [False]
    q = enc.encode([QUERY])[0]
    if setup[3].feedback[0] > 0:          # the slot holds the candidate-aware query, not the query's own vector
        assert not np.allclose(batch["emb"][0, 5], q / np.linalg.norm(q), atol=1e-3)
        np.testing.assert_allclose(batch["emb"][0, 5], feedback_query(q, enc.encode(TEXTS), 1.0, 0.5), rtol=1e-5)
    else:
        np.testing.assert_array_equal(batch["emb"][0, 5], q)
    e = scale_query_slot(project_lists(*nnx.split(proj), batch["emb"]), batch["valid"], setup[3].query_scale)
    return np.asarray(listwise_logits(dec.model, e, batch, "wo"))[0]


def test_teacher_forced_training_logits_reproduce_the_decoded_ranking(setup):
    ranker = setup[3]
    order = ranker.rerank(QUERY, TEXTS)
    assert sorted(order) == list(range(5))
    L = _train_logits(setup, order)                                   # [6, 6] incl. the query slot
    used = np.zeros(6, bool)
    used[5] = True                                                    # the query is never a candidate
    for j, gold in enumerate(order):
        pick = int(np.argmax(np.where(used, MASKED, L[j])))
        assert pick == gold, f"step {j}: training logits pick {pick}, inference decoded {gold}"
        used[pick] = True


def test_single_pass_order_is_the_step0_training_order(setup):
    ranker = setup[3]
    single = ranker.rerank(QUERY, TEXTS, mode="single_pass")
    L = _train_logits(setup, list(range(5)))
    assert single == [int(i) for i in np.argsort(-L[0, :5], kind="stable")]


def test_query_token_prompt_ends_with_the_query_slot(setup):
    ranker = setup[3]
    text = ranker.prompt(QUERY, TEXTS)
    assert text.endswith(prompts.PLACEHOLDER) and text.count(prompts.PLACEHOLDER) == 6
    rec = listwise_record(QUERY, TEXTS, range(5), template="compact", query_token=False, content_view=False)
    assert "query_text" not in rec and rec["messages_wo_content"][0]["content"].count(prompts.PLACEHOLDER) == 5


def test_isometric_linear_projector_keeps_the_encoders_inner_products():
    p = build_projector("linear", 6, 16, rngs=nnx.Rngs(0)).init_isometry(3.0, seed=1)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    y = np.asarray(p(x))[:, 0]
    np.testing.assert_allclose(y @ y.T, 9.0 * (x @ x.T), rtol=1e-4, atol=1e-4)


def test_isometric_start_of_a_wider_encoder_is_a_scaled_orthogonal_projection():
    """768-d mpnet into a 576-d LLM: the kernel's columns are orthonormal (times the scale), so a
    vector inside the kept subspace keeps its norm and no vector grows."""
    p = build_projector("linear", 16, 6, rngs=nnx.Rngs(0)).init_isometry(2.0, seed=1)
    k = np.asarray(p.layer.kernel[...])
    np.testing.assert_allclose(k.T @ k, 4.0 * np.eye(6), atol=1e-5)
    x = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    y = np.asarray(p(x))[:, 0]
    assert np.all(np.linalg.norm(y, axis=1) <= 2.0 * np.linalg.norm(x, axis=1) + 1e-4)
    inside = (k @ np.ones(6, np.float32)) / 4.0                    # a vector in the kept subspace
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p(inside[None]))), 2.0 * np.linalg.norm(inside), rtol=1e-4)


def test_a_run_trained_with_feedback_saves_it_and_refuses_to_resume_with_other_settings(tmp_path):
    """`model.query_feedback` is a training setting that the adapter and the full export both carry,
    so what loads them ranks with the query vector it was trained on; its checkpoint resumes only
    with the same setting (and the same data seed)."""
    import json

    from perank_jax.train.loop import train
    from perank_jax.train.config import load_train_config
    from perank_jax.train.embeddings import save_table
    from fixtures import write_jsonl
    dec_dir = decoder_dir(tmp_path / "dec", init_std=0.1)
    enc = TableEncoder()
    recs = [listwise_record(QUERY, TEXTS[i:] + TEXTS[:i], range(5), template="compact", query_token=True,
                            content_view=False) for i in range(4)]
    write_jsonl(tmp_path / "train.jsonl", recs)
    save_table(tmp_path / "emb.npz", TEXTS + [QUERY], enc.encode(TEXTS + [QUERY]))
    cfg = load_train_config("configs/tiny.stage2.yaml", [
        f"model.decoder={dec_dir}", f"data.train={tmp_path / 'train.jsonl'}", f"data.embeddings={tmp_path / 'emb.npz'}",
        f"output_dir={tmp_path / 'run'}", "model.prompt_template=compact", "model.query_token=true",
        "model.query_scale=50", "model.query_feedback=[1,0.5]", "data.use_content_view=false", "lora.rank=2",
        "global_batch=2", "optim.max_steps=1", "data.buckets=[128]", "data.max_len=128",
        "xla_options={xla_backend_optimization_level: 0}"])
    train(cfg)
    for d in (tmp_path / "run" / "adapter", tmp_path / "run" / "export"):
        conf = json.loads((d / "config.json").read_text())
        assert (conf["query_feedback_weight"], conf["query_feedback_temperature"]) == (1.0, 0.5), d
        ranker = PERanker.from_pretrained(d, encoder=enc)
        assert ranker.feedback == (1.0, 0.5) and ranker.query_scale == 50
    # the run's checkpoint was made with the feedback on: resuming it with other settings is refused
    from perank_jax.core.config import ConfigError
    from dataclasses import replace
    for other in (replace(cfg.model, query_feedback=[0.0, 0.01]), replace(cfg.model, query_feedback=[1.0, 0.2])):
        with pytest.raises(ConfigError, match=r"other data or settings \(query_feedback: \[1\.0, 0\.5\] -> "):
            train(replace(cfg, model=other))
    with pytest.raises(ConfigError, match=r"data_seed: 0 -> 1"):
        train(replace(cfg, data=replace(cfg.data, seed=1)))


def test_the_query_slot_is_scaled_on_the_host_for_numpy_input_exactly_as_in_jit():
    """Inference scales numpy rows (one shape per document count: nothing may compile per count);
    training scales jax arrays inside jit. Same rule, same float32 result."""
    import jax
    import jax.numpy as jnp
    from perank_jax.serve.metrics import compile_count, install_compile_listener
    install_compile_listener()
    rng = np.random.default_rng(0)
    for n in (3, 5, 11):
        e = rng.normal(size=(2, n + 1, 4)).astype(np.float32)
        valid = np.arange(n + 1)[None] < np.array([[n], [n - 1]])
        before = compile_count()
        host = scale_query_slot(e, valid, 3000.0)
        assert isinstance(host, np.ndarray) and compile_count() == before
        np.testing.assert_array_equal(host, np.asarray(jax.jit(scale_query_slot, static_argnums=2)(
            jnp.asarray(e), jnp.asarray(valid), 3000.0)))
        assert (host[0, n] == e[0, n] * np.float32(3000.0)).all() and (host[0, :n] == e[0, :n]).all()
