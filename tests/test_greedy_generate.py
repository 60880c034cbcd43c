"""Compiled greedy generation equals a naive no-cache Python loop and HF generate, and compiles once."""
import numpy as np
import torch

from fixtures import make_tiny_hf_decoder
from perank_jax.inference.generate import GENERATE_TRACES, greedy_generate
from perank_jax.weights.decoder import load_decoder


def _naive(dec, prompt, n, eos):
    """Full forward over the whole sequence every step, argmax of the last position."""
    seq = list(prompt)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(np.asarray(dec.logits(np.array([seq])))[0, -1]))
        out.append(nxt)
        seq.append(nxt)
        if nxt in eos:
            break
    return out


def test_greedy_generate_equals_naive_loop_and_hf_generate(tmp_path):
    ref = make_tiny_hf_decoder(tmp_path, "llama", vocab_size=64, num_attention_heads=4, num_key_value_heads=2)
    dec = load_decoder(tmp_path)
    rng = np.random.RandomState(0)
    prompts = [list(rng.randint(3, 64, n)) for n in (7, 3, 12, 1)]
    eos = [2]
    out, n_gen = greedy_generate(dec.graphdef, dec.state, prompts, 10, eos)
    for b, p in enumerate(prompts):
        got = list(out[b, :n_gen[b]])
        assert got == _naive(dec, p, 10, eos)
        with torch.no_grad():
            hf = ref.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=2,
                              pad_token_id=0, attention_mask=torch.ones(1, len(p), dtype=torch.long))
        assert got == hf[0, len(p):].tolist()[:len(got)] and len(got) == hf.shape[1] - len(p)


def test_greedy_generate_stops_at_eos_and_compiles_once_per_bucket(tmp_path):
    make_tiny_hf_decoder(tmp_path, "mistral", vocab_size=64)
    dec = load_decoder(tmp_path)
    rng = np.random.RandomState(1)
    before = GENERATE_TRACES.count
    first = None
    for n in (2, 5, 9, 16):                       # all inside the 16-token bucket
        prompt = list(rng.randint(3, 64, n))
        out, n_gen = greedy_generate(dec.graphdef, dec.state, [prompt, prompt[:1]], 6, [2])
        first = first or list(out[0, :n_gen[0]])
    assert GENERATE_TRACES.count == before + 1
    # make the first generated token the EOS: generation stops after one token
    out, n_gen = greedy_generate(dec.graphdef, dec.state, [prompt], 6, [int(out[0, 0])])
    assert n_gen[0] == 1
