"""Write a tiny offline toy set (a random decoder and the packaged example queries) for tutorials and smoke runs.

    python tools/make_toy_set.py toy [--train-queries 4] [--hidden 64] [--layers 2] [--seed 0]

OUT receives (nothing is downloaded; docs/extending.md uses it):
  corpus.tsv                      docid<TAB>text: every passage of perank_jax/examples/example.jsonl
  qrels.txt                       that set's `relevant` passages (grade 1)
  train.queries.tsv, train.run    the first --train-queries queries and their first-stage order
                                  (input of tools/build_stage2_data.py)
  test.queries.tsv, test.run      the other queries (a `perank tables` dataset)
  decoder/                        a RANDOM Llama-architecture decoder (HF directory) whose word-level
                                  tokenizer covers every word of the set and of PE-Rank's prompts, with
                                  Mistral's chat template (the mistral-7b model preset)
The decoder is random, so a few training steps on it check a pipeline; they do not make a reranker.
OUT is written whole into a temp directory and renamed; an existing OUT is replaced only if it holds
nothing but this tool's outputs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from perank_jax.cli import EXAMPLE_SET

OUTPUTS = ("corpus.tsv", "qrels.txt", "train.queries.tsv", "train.run", "test.queries.tsv", "test.run", "decoder")
EXAMPLES = EXAMPLE_SET          # perank_jax/examples/example.jsonl, what `perank rerank` reranks by default


def word_tokenizer(texts):
    """A word-level HF tokenizer over every word of `texts` (whitespace / punctuation split) with
    <pad> <s> </s> <unk> [INST] [/INST] first, Mistral's chat template and the PE-Rank tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from perank_jax import listwise as prompts
    from perank_jax.models import load_preset
    split = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in split.pre_tokenize_str(t)})
    specials = ["<pad>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]"]
    vocab = {w: i for i, w in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = split
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                unk_token="<unk>")
    t.add_special_tokens({"additional_special_tokens": ["[INST]", "[/INST]"]})
    t.chat_template = load_preset("mistral-7b").chat_template
    prompts.add_special_tokens(t)
    return t


def prompt_texts(requests) -> list[str]:
    """Every text the decoder will read: queries, passages and each PE-Rank prompt around them."""
    from perank_jax import listwise as prompts
    from perank_jax.data import STAGE1_PROMPT
    out = [STAGE1_PROMPT]
    for r in requests:
        texts = [c.text for c in r.candidates]
        out += [r.query, *texts, prompts.content_prompt(r.query, texts), prompts.text_prompt(r.query, texts)]
        out += [prompts.user_prompt(name, r.query, len(texts)) for name in prompts.TEMPLATES]
    return out


def write_decoder(out: Path, tokenizer, hidden: int, layers: int, seed: int) -> Path:
    """Random weights drawn with numpy (N(0, 0.1); norms 1), under the HF names the loader expects."""
    import numpy as np

    from perank_jax.models import DecoderConfig
    from perank_jax.weights import expected_hf_shapes, write_hf_dir
    cfg = DecoderConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                        num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=hidden // 4,
                        max_position_embeddings=4096, model_type="llama",
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    rng = np.random.default_rng(seed)
    tensors = {key: (np.ones(shape) if "norm" in key else 0.1 * rng.standard_normal(shape)).astype(np.float32)
               for key, shape in expected_hf_shapes(cfg).items()}
    return write_hf_dir(out, cfg.to_hf(), tensors, tokenizer)


def write_toy_set(out_dir, train_queries: int = 4, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    from perank_jax.core import atomic_text, fresh_temp, replace_dir
    from perank_jax.data import read_requests, write_qrels, write_run
    requests = read_requests(EXAMPLES)
    if not 1 <= train_queries < len(requests):
        raise ValueError(f"--train-queries must be in [1, {len(requests) - 1}] (the example set has "
                         f"{len(requests)} queries), got {train_queries}")
    relevant = {}
    for line in EXAMPLES.read_text().splitlines():
        rec = json.loads(line)
        relevant[rec["qid"]] = {c["docid"]: 1 for c in rec["candidates"] if c.get("relevant") is True}
    out = Path(out_dir)
    tmp = fresh_temp(out, directory=True)
    try:
        docs = {c.docid: " ".join(c.text.split()) for r in requests for c in r.candidates}
        atomic_text(tmp / "corpus.tsv", "".join(f"{d}\t{t}\n" for d, t in docs.items()))
        write_qrels({r.qid: relevant[r.qid] for r in requests}, tmp / "qrels.txt")
        for part, reqs in (("train", requests[:train_queries]), ("test", requests[train_queries:])):
            atomic_text(tmp / f"{part}.queries.tsv", "".join(f"{r.qid}\t{r.query}\n" for r in reqs))
            write_run({r.qid: r.candidates for r in reqs}, tmp / f"{part}.run", tag="example", scores="given")
        write_decoder(tmp / "decoder", word_tokenizer(prompt_texts(requests)), hidden, layers, seed)
        replace_dir(tmp, out, ours=OUTPUTS)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="output directory")
    p.add_argument("--train-queries", type=int, default=4, help="queries for training; the rest are the test set")
    p.add_argument("--hidden", type=int, default=64, help="decoder hidden size (a multiple of 8)")
    p.add_argument("--layers", type=int, default=2, help="decoder layers")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.hidden < 8 or a.hidden % 8 or a.layers < 1:
        p.error(f"--hidden must be a positive multiple of 8 and --layers >= 1, got {a.hidden} and {a.layers}")
    try:
        out = write_toy_set(a.out, a.train_queries, a.hidden, a.layers, a.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote the toy set to {out}: {', '.join(OUTPUTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
