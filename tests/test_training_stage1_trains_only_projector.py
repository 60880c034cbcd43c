"""Stage 1 trains the projector alone: against a frozen decoder that can read embeddings, a
fresh projector learns held-out passage reconstruction (loss falls to near what the decoder
was pre-trained to reach); the decoder's parameters are bit-for-bit those on disk after
training, the optimiser holds no decoder state, the export is the projector alone; gradient accumulation over microbatches equals one big batch;
and stage-2 LoRA (bf16 compute, fp32 master weights, remat) leaves the base decoder untouched
while the exported (merged) one moves."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from fixtures import (make_decoder_dir, make_tokenizer, pretrain_reader, stage1_records, stage2_records,
                        table_file, write_jsonl)
from perank_jax.train.config import load_train_config
from perank_jax.train.loop import Run, fit

FAST = "xla_options={xla_backend_optimization_level: 0}"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(data directory, the projector the decoder `dec` was jointly pre-trained with)."""
    d = tmp_path_factory.mktemp("stage1")
    tok = make_tokenizer()
    make_decoder_dir(d / "random_dec", tok)
    pre, t0 = stage1_records(512, seed=2)           # the decoder's own pre-training split
    tr, t1 = stage1_records(256, seed=0)
    ev, t2 = stage1_records(64, seed=1)             # held out from both
    s2, t3 = stage2_records(16, seed=3)
    write_jsonl(d / "pre.jsonl", pre)
    write_jsonl(d / "train.jsonl", tr)
    write_jsonl(d / "eval.jsonl", ev)
    write_jsonl(d / "s2.jsonl", s2)
    table_file(d / "emb.npz", t0, t1, t2, t3)
    _, joint_projector = pretrain_reader(load_train_config("configs/tiny.stage1.yaml", [
        f"model.decoder={d / 'random_dec'}", f"data.train={d / 'pre.jsonl'}", f"data.embeddings={d / 'emb.npz'}",
        f"output_dir={d / 'pre'}", FAST]), d / "dec")
    return d, joint_projector


@pytest.fixture(scope="module")
def files(pretrained):
    return pretrained[0]


def overrides(files, out, *extra):
    return [f"model.decoder={files / 'dec'}", f"data.train={files / 'train.jsonl'}",
            f"data.embeddings={files / 'emb.npz'}", f"output_dir={out}", FAST, *extra]


def disk_decoder(files):
    from perank_jax.weights.decoder import load_decoder
    return nnx.to_pure_dict(nnx.state(load_decoder(files / "dec").model))


def test_stage1_fresh_projector_learns_heldout_reconstruction_and_leaves_decoder_untouched(pretrained):
    files, joint = pretrained
    cfg = load_train_config("configs/tiny.stage1.yaml", overrides(
        files, files / "run", f"data.eval={files / 'eval.jsonl'}", "optim.lr=3e-2", "optim.max_steps=200", "seed=1"))
    t = fit(cfg)
    s, run = t.summary, t.run
    # learning: held-out reconstruction cross-entropy falls from the fresh projector's ...
    before, after = s["initial_eval_loss"], s["eval_loss"]
    # ... to near what the decoder's own (jointly pre-trained) projector reaches ...
    joint_loss = run.evaluate({"projector": joint})["eval_loss"]
    # ... and depends on WHICH passage was embedded: mismatched embeddings do much worse
    shuffled = run.eval_data
    shuffled.table = shuffled.table[np.random.default_rng(0).permutation(len(shuffled.table))]
    mismatched = run.evaluate(t.state["params"])["eval_loss"]
    print(f"stage-1 held-out reconstruction CE: {before:.3f} -> {after:.3f} (decoder's pre-training projector: "
          f"{joint_loss:.3f}; mismatched embeddings: {mismatched:.3f}; "
          f"uniform over the vocabulary: {np.log(run.decoder.config.vocab_size):.3f})")
    assert after < before - 2.0
    assert after < mismatched - 2.0
    assert after < joint_loss + 0.3
    # only the projector is trainable; the decoder is bit-identical to the weights on disk
    assert set(t.state["params"]) == {"projector"}
    assert {k for p, _ in jax.tree_util.tree_flatten_with_path(t.state["opt"])[0] for k in map(str, p)
            if "decoder" in k} == set()
    on_disk = disk_decoder(files)
    frozen = jax.tree.map(np.asarray, run.trainer.frozen["decoder"])
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(on_disk)[0], jax.tree.leaves(frozen)):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=str(path))
    # the export is the projector alone, loadable as `model.projector_init`
    export = files / "run" / "export"
    assert sorted(p.name for p in export.iterdir()) == ["projector.safetensors", "projector_config.json"]
    from perank_jax.weights.projector import load_projector
    conf = json.loads((export / "projector_config.json").read_text())
    proj = load_projector(export, conf["projector_type"], conf["embedding_size"], conf["hidden_size"])
    np.testing.assert_array_equal(np.asarray(proj.layers[1].kernel[...]),
                                  np.asarray(t.state["params"]["projector"]["layers"][1]["kernel"]))


def test_gradient_accumulation_equals_one_big_batch(files):
    params = []
    for accum in (1, 4):
        run = Run(load_train_config("configs/tiny.stage1.yaml",
                                    overrides(files, files / f"acc{accum}", f"grad_accum={accum}", "optim.max_steps=8")))
        state = run.trainer.init_state()
        for step in range(2):
            state, m = run.trainer.step(state, run.batch(run.train_data, run.order.indices(step)))
        params.append(jax.tree.map(np.asarray, state["params"]))
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), *params))
    assert max(diffs) < 1e-6


def test_stage2_lora_in_bf16_with_fp32_master_weights_and_remat_exports_merged_decoder(files):
    cfg = load_train_config("configs/tiny.stage2.yaml", [
        f"model.decoder={files / 'dec'}", f"data.train={files / 's2.jsonl'}", f"data.embeddings={files / 'emb.npz'}",
        f"output_dir={files / 'lora'}", FAST, "lora.rank=2", "lora.targets=[q, v]", "optim.lr=1e-2",
        "optim.max_steps=3", "data.buckets=[32,64]", "data.max_len=64", "data.use_content_view=false",
        "compute_dtype=bfloat16", "param_dtype=float32", "remat=true"])
    t = fit(cfg)
    p = t.state["params"]
    assert {x.dtype for x in jax.tree.leaves(p)} == {np.dtype("float32")}        # master weights
    assert t.run.decoder.model.dtype == jax.numpy.bfloat16 and t.run.decoder.model.remat   # bf16 compute
    assert set(p) == {"projector", "lora"} and set(p["lora"]) == {"q", "v"}
    assert float(np.abs(np.asarray(p["lora"]["q"]["b"])).max()) > 0            # adapters moved
    base = disk_decoder(files)
    frozen = t.run.trainer.frozen["decoder"]
    np.testing.assert_array_equal(np.asarray(frozen["q"]), np.asarray(base["q"]))  # base untouched
    from perank_jax.weights.decoder import load_decoder
    exported = load_decoder(files / "lora" / "export", ignore=lambda k: "projector" in k).model
    assert float(np.abs(np.asarray(exported.q[...]) - np.asarray(base["q"])).max()) > 0   # merged delta
    np.testing.assert_array_equal(np.asarray(exported.k[...]), np.asarray(base["k"]))  # not a target
