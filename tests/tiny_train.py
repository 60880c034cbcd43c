"""Builders for the training tests: a word-level tokenizer with a Mistral-style chat template,
a tiny random decoder saved as an HF directory, and two synthetic tasks with known answers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from perank_jax import prompts

CHAT = ("{% for m in messages %}{% if m['role'] == 'user' %}<s> [INST] {{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }} </s>{% endif %}{% endfor %}")
TOPICS = 4
WORDS = [f"w{i}" for i in range(12)] + [f"t{i}" for i in range(TOPICS)] + ["about", "topic", "Reconstruct", ":"]


def make_tokenizer(extra_words=()):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    sample = prompts.content_prompt("q", ["x"]) + prompts.embedding_prompt("q", 2)
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for w, _ in pre.pre_tokenize_str(sample)} | set(WORDS) | set(extra_words))
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                unk_token="<unk>")
    t.add_special_tokens({"additional_special_tokens": ["[INST]", "[/INST]"]})
    t.chat_template = CHAT
    prompts.add_special_tokens(t)
    return t


def make_decoder_dir(path, tokenizer, hidden=32, layers=2, seed=0, init_std=0.1):
    """A random Llama-style decoder as an HF directory (config.json, model.safetensors, tokenizer)."""
    import jax.numpy as jnp
    from flax import nnx

    from perank_jax.models.decoder import Decoder, DecoderConfig
    from perank_jax.weights.decoder import to_hf_tensors
    from perank_jax.weights.io import save_safetensors_atomic
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = DecoderConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                        num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=hidden // 4,
                        model_type="llama", bos_token_id=1, eos_token_id=2)
    model = Decoder(cfg, rngs=nnx.Rngs(seed), dtype=jnp.float32, param_dtype=jnp.float32, init_std=init_std)
    save_safetensors_atomic(to_hf_tensors(model), path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(cfg.to_hf()))
    tokenizer.save_pretrained(str(path))
    return path


def write_jsonl(path, records):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in records))
    return Path(path)


# --- synthetic stage 1: reconstruct a 4-word passage from its embedding -----------------------
def stage1_records(n_records, seed=0, dim=16):
    """Records and {text: vector}: the vector is a fixed random code of the passage's words."""
    rng = np.random.default_rng(seed)
    code = np.random.default_rng(123).normal(size=(4, 12, dim)) / 2.0
    records, table = [], {}
    for _ in range(n_records):
        w = rng.integers(0, 12, 4)
        text = " ".join(f"w{i}" for i in w)
        table[text] = sum(code[k, w[k]] for k in range(4)).astype(np.float32)
        records.append({"messages": [{"role": "user", "content": f"Reconstruct [{prompts.PLACEHOLDER}]"},
                                     {"role": "assistant", "content": text}],
                        "extra_texts": [text]})
    return records, table


# --- synthetic stage 2: rank passages by closeness to the query's topic ------------------------
def stage2_records(n_records, n=5, seed=0, dim=16, short=True):
    """The query names a topic; a passage's embedding is its topic's centroid plus noise; the
    teacher ranks passages by similarity to the query topic's centroid. `short` uses compact
    prompts (same structure: n placeholders, then the <RANK> slots) to keep tests fast;
    otherwise the real PE-Rank prompts."""
    rng = np.random.default_rng(seed)
    centroids = np.random.default_rng(7).normal(size=(TOPICS, dim))
    ph = prompts.PLACEHOLDER
    records, table = [], {}
    for r in range(n_records):
        q = int(rng.integers(TOPICS))
        topics = rng.integers(0, TOPICS, n)
        topics[rng.integers(n)] = q                       # at least one on-topic passage
        vecs = centroids[topics] + 0.6 * rng.normal(size=(n, dim))
        texts = [f"about t{t} w{r % 12} w{i} {r}" for i, t in enumerate(topics)]
        for t, v in zip(texts, vecs):
            table[t] = v.astype(np.float32)
        ranking = [int(i) for i in np.argsort(-(vecs @ centroids[q]), kind="stable")]
        query = f"topic t{q}"
        if short:
            wo = f"{query} : " + " ".join(f"[{ph}]" for _ in texts) + f" {query}"
            w = f"{query} : " + " ".join(f"[{ph}] {t}" for t in texts) + f" {query}"
        else:
            wo, w = prompts.embedding_prompt(query, n), prompts.content_prompt(query, texts)
        records.append({"messages_wo_content": [{"role": "user", "content": wo}],
                        "messages_w_content": [{"role": "user", "content": w}],
                        "ranking": ranking, "extra_texts": texts})
    return records, table


def table_file(path, *tables):
    from perank_jax.train.embeddings import save_table
    merged = {}
    for t in tables:
        merged.update(t)
    return save_table(path, list(merged), np.stack(list(merged.values())))


def pretrain_reader(cfg, out_dir, steps=1000, lr=3e-3):
    """A decoder that can read passage embeddings: the random decoder of `cfg` (a stage-1
    config) trained JOINTLY with a throwaway projector on cfg's data (plain Adam, the
    production stage-1 loss), saved as an HF directory. Stage 1 proper then starts a fresh
    projector against this frozen decoder, as PE-Rank does against a pre-trained LLM."""
    import jax
    import optax
    from flax import nnx

    from perank_jax.train.loop import Run
    from perank_jax.weights.decoder import to_hf_tensors
    from perank_jax.weights.io import save_safetensors_atomic
    run = Run(cfg)
    fns = run.trainer.fns
    params = {"projector": run.trainer.init_params["projector"], "decoder": run.trainer.frozen["decoder"]}
    tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, 10, steps))

    @jax.jit
    def step(params, opt, batch):
        def loss(p):
            return fns.loss({"projector": p["projector"]}, {"decoder": p["decoder"]}, batch)[0]
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    opt = tx.init(params)
    for k in range(steps):
        params, opt, _ = step(params, opt, run.batch(run.train_data, run.order.indices(k)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(to_hf_tensors(nnx.merge(fns.dec_gd, params["decoder"])), out / "model.safetensors")
    (out / "config.json").write_text((Path(cfg.model.decoder) / "config.json").read_text())
    run.tokenizer.save_pretrained(str(out))
    return out, params["projector"]
