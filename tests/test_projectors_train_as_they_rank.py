"""Projectors beyond one vector per passage, in training: a k = 2 projector's stage-2 step and an
external projector's stage-1 step on the (2,4) mesh of 8 fake CPU devices equal the one-device steps, and a projector that uses the query
receives the same query vector in a training step as at inference (the candidate-aware one when
the checkpoint's query feedback is on, the query's own vector otherwise).

The projectors live outside the package (tests/external_projector.py); the training config selects
them by import path, as a researcher's would."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import external_projector as P
from perank_jax.listwise.feedback import feedback_query
from perank_jax.inference.ranker import PERanker
from perank_jax.train.config import load_train_config
from perank_jax.train.loop import Run
from perank_jax.weights.decoder import load_decoder
from fixtures import make_decoder_dir, make_tokenizer, stage1_records, stage2_records, table_file, write_jsonl

FAST = "xla_options={xla_backend_optimization_level: 0}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny decoder, 16 stage-2 records (5 passages, each with its `query_text`) and their embeddings."""
    d = tmp_path_factory.mktemp("proj_train")
    make_decoder_dir(d / "dec", make_tokenizer())
    recs, table = stage2_records(16, seed=0)
    rng = np.random.default_rng(5)
    for r in recs:
        r["query_text"] = r["messages_wo_content"][0]["content"].split(" : ")[0]     # "topic tN"
        table.setdefault(r["query_text"], rng.normal(size=16).astype(np.float32))
    write_jsonl(d / "train.jsonl", recs)
    table_file(d / "emb.npz", table)
    return d, recs, table


def run_with(monkeypatch, files, projector_cls, *extra) -> Run:
    d = files[0]
    cfg = load_train_config("configs/tiny.stage2.yaml", [f"model.projector=external_projector:{projector_cls.__name__}",
        f"model.decoder={d / 'dec'}", f"data.train={d / 'train.jsonl'}", f"data.embeddings={d / 'emb.npz'}",
        f"output_dir={d / 'run'}", "data.buckets=[64,128]", "data.max_len=128", "optim.lr=1e-2",
        "optim.max_steps=3", "data.use_content_view=false", FAST, *extra])
    return Run(cfg)


def host(tree):
    return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def three_steps(run):
    """(initial, after 3 steps) parameters on the host."""
    state = run.trainer.init_state()
    initial = host(state["params"])               # the step donates its input state
    for step in range(3):
        state, _ = run.trainer.step(state, run.batch(run.train_data, run.order.indices(step)))
    return initial, host(state["params"])


def test_k2_stage2_step_on_2x4_mesh_equals_one_device(monkeypatch, files):
    one = run_with(monkeypatch, files, P.TwoTokenProjector, "model.query_token=true", "model.query_scale=3")
    assert one.train_data.tokens_per_passage == 2
    batch = one.batch(one.train_data, one.order.indices(0))
    T = batch["wo_ids"].shape[1]
    assert (np.asarray(batch["wo_ph_pos"]) < T).sum(axis=1).tolist() == [2 * 6] * 8   # 5 passages + the query, k = 2
    mesh = run_with(monkeypatch, files, P.TwoTokenProjector, "model.query_token=true", "model.query_scale=3",
                    "mesh.shape=[2,4,1]")
    assert dict(mesh.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    initial, want = three_steps(one)
    _, got = three_steps(mesh)
    assert one.trainer.traces.count == 1 and mesh.trainer.traces.count == 1
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), got, want))
    moved = float(np.max(np.abs(want["projector"]["w"] - initial["projector"]["w"])))
    print(f"k=2: max |param difference| after 3 steps, (2,4) mesh vs 1 device: {max(diffs):.2e}")
    assert max(diffs) < 1e-5 and moved > 1e-3                      # equal, and the projector really trained


def test_an_external_projector_by_import_path_trains_stage1_on_2x4_mesh_as_on_one_device(files, tmp_path):
    """Three stage-1 steps of GatedLinear (selected as "external_projector:GatedLinear", with its own
    option) on the (2,4) mesh equal three on one device; the projector moves, sharded over 8 devices."""
    recs, table = stage1_records(16)
    write_jsonl(tmp_path / "s1.jsonl", recs)
    table_file(tmp_path / "s1.npz", table)

    def run(*extra):
        return Run(load_train_config("configs/tiny.stage1.yaml", [
            "model.projector=external_projector:GatedLinear", "model.projector_options={gain: 0.5}",
            f"model.decoder={files[0] / 'dec'}", f"data.train={tmp_path / 's1.jsonl'}",
            f"data.embeddings={tmp_path / 's1.npz'}", f"output_dir={tmp_path / 'run'}", "optim.lr=1e-2",
            "optim.max_steps=3", FAST, *extra]))
    one, mesh = run(), run("mesh.shape=[2,4,1]")
    assert dict(mesh.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert type(one.projector) is P.GatedLinear and one.projector.options.gain == 0.5
    assert len(mesh.trainer.init_state()["params"]["projector"]["w"].sharding.device_set) == 8
    initial, want = three_steps(one)
    _, got = three_steps(mesh)
    assert set(want) == {"projector"} and one.trainer.traces.count == 1 and mesh.trainer.traces.count == 1
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), got, want))
    moved = float(np.max(np.abs(want["projector"]["w"] - initial["projector"]["w"])))
    print(f"stage 1: max |param difference| after 3 steps, (2,4) mesh vs 1 device: {max(diffs):.2e}")
    assert max(diffs) < 1e-5 and moved > 1e-3


@pytest.mark.parametrize("extra,feedback", [
    (("model.query_token=true", "model.query_feedback=[1,0.5]"), (1.0, 0.5)),
    ((), None)], ids=["query_slot_with_feedback", "no_query_slot"])
def test_a_query_using_projector_gets_the_same_query_vector_in_training_and_at_inference(
        monkeypatch, files, extra, feedback):
    _, recs, table = files
    run = run_with(monkeypatch, files, P.QueryRecordingProjector, *extra)
    idx = run.order.indices(0)
    P.QUERIES_SEEN.clear()
    run.trainer.step(run.trainer.init_state(), run.batch(run.train_data, idx))
    jax.effects_barrier()
    (seen,) = P.QUERIES_SEEN
    rows = seen.reshape(len(idx), -1, seen.shape[-1])                  # [B, slots, E]: one query per list
    rec = recs[int(idx[0])]
    q, passages = table[rec["query_text"]], np.stack([table[t] for t in rec["extra_texts"]])
    want = feedback_query(q, passages, *feedback) if feedback else q
    assert not np.allclose(want, q) or feedback is None                # feedback really moves it
    np.testing.assert_allclose(rows[0], np.broadcast_to(want, rows[0].shape), rtol=1e-6, atol=1e-7)

    class TableEncoder:
        dim = 16

        def encode(self, texts, batch_size=32):
            return np.stack([table[t] for t in texts])

    conf = {"query_token": bool(extra), **({"query_feedback_weight": feedback[0],
                                            "query_feedback_temperature": feedback[1]} if feedback else {})}
    dec = load_decoder(files[0] / "dec")
    ranker = PERanker(dec, P.QueryRecordingProjector(16, 32), dec.tokenizer, TableEncoder(), config=conf,
                      length_bucket=64)        # the run's own arrays were donated to its step
    P.QUERIES_SEEN.clear()
    ranker.rerank(rec["query_text"], rec["extra_texts"])
    jax.effects_barrier()
    (seen,) = P.QUERIES_SEEN
    n = len(rec["extra_texts"]) + bool(extra)                          # the projected rows (padding after)
    np.testing.assert_allclose(seen[:n], rows[0][:n], rtol=1e-6, atol=1e-7)


def test_k2_training_records_hold_k_placeholders_per_slot_and_keep_their_labels():
    """Stage 1 and stage 2 records with k = 2: each <PLACEHOLDER> becomes two, nothing else moves
    (the stage-1 loss still covers exactly the assistant's tokens), and each slot's k positions
    are consecutive."""
    from perank_jax.train import data as D
    from fixtures import stage1_records
    tok = make_tokenizer()
    ph = tok.convert_tokens_to_ids("<PLACEHOLDER>")
    for stage, recs in ((1, stage1_records(3)[0]), (2, stage2_records(3)[0])):
        embed = lambda texts: np.zeros((len(texts), 16), np.float32)           # noqa: E731
        kw = dict(max_len=256, max_passages=5, use_content_view=False)
        one, two = (D.prepare(recs, tok, stage, embed, tokens_per_passage=k, **kw) for k in (1, 2))
        for a, b in zip(*(p.views["main" if stage == 1 else "wo"] for p in (one, two))):
            assert len(b.ph_pos) == 2 * len(a.ph_pos) and (b.ph_pos[1::2] == b.ph_pos[::2] + 1).all()
            keep = np.ones(len(b.ids), bool)
            keep[b.ph_pos[1::2]] = False                                        # drop each slot's second token
            assert (b.ids[keep] == a.ids).all() and (b.label_mask[keep] == a.label_mask).all()
            assert (b.ids[b.ph_pos] == ph).all() and b.label_mask.sum() == a.label_mask.sum()
