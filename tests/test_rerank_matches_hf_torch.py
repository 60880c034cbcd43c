"""End to end on the same weights, PERanker equals the reference algorithm run with
transformers' MistralForCausalLM: projected vectors placed at the placeholders via
inputs_embeds, each e_i installed as an extra vocabulary row (input and output
embedding, as the paper's code does), greedy steps restricted to the unused passage
tokens, KV cache through past_key_values."""
import copy

import numpy as np
import pytest
import torch

from perank_jax.inference.ranker import PERanker

WORDS = "cat dog river bank money loan fish tree green house music piano law court city".split()


def _hf_reference(model, projector, tokenizer, prompt_text, emb, placeholder_id):
    ids = torch.tensor([tokenizer(prompt_text, add_special_tokens=False)["input_ids"]])
    e = projector(torch.from_numpy(emb)).detach()                       # [n, D]
    n, v0 = e.shape[0], model.config.vocab_size
    m = copy.deepcopy(model)
    m.resize_token_embeddings(v0 + n)
    with torch.no_grad():
        m.get_input_embeddings().weight[v0:] = e
        m.get_output_embeddings().weight[v0:] = e
        x = m.get_input_embeddings()(ids)
        x[ids == placeholder_id] = e                                     # k-th placeholder <- passage k
        out = m(inputs_embeds=x, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
        ranking = []
        for _ in range(n):
            allowed = torch.full_like(logits, float("-inf"))
            free = [v0 + i for i in range(n) if i not in ranking]
            allowed[free] = logits[free]
            tok = int(torch.argmax(allowed))
            ranking.append(tok - v0)
            out = m(input_ids=torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1]
    return ranking


@pytest.fixture(scope="module")
def pair(tiny_perank):
    path, model, projector = tiny_perank
    ranker = PERanker.from_pretrained(path, length_bucket=256)   # encoder from config.json encoder_name
    return ranker, model.float().eval(), projector.eval()


def test_rankings_equal_hf_torch_reference(pair):
    ranker, model, projector = pair
    rng = np.random.default_rng(0)
    queries, lists = [], []
    for n in [1, 2, 5, 9, 13, 16, 3, 16, 11, 7, 14, 6]:   # padded together in one batch
        queries.append(" ".join(rng.choice(WORDS, 3)))
        lists.append([" ".join(rng.choice(WORDS, int(rng.integers(3, 12)))) for _ in range(n)])
    got = ranker.rerank_batch(queries, lists)
    for case, (query, passages) in enumerate(zip(queries, lists)):
        emb = ranker.encoder.encode(passages)
        want = _hf_reference(model, projector, ranker.tokenizer, ranker.prompt(query, passages), emb,
                             ranker.placeholder_id)
        assert got[case] == want, f"case {case} (n={len(passages)}): jax {got[case]} != torch {want}"


def test_sliding_window_rerank_equals_hf_reference_window_by_window(pair):
    from perank_jax.listwise.windows import sliding_windows
    ranker, model, projector = pair
    rng = np.random.default_rng(1)
    query = "green river bank"
    passages = [" ".join(rng.choice(WORDS, 6)) for _ in range(23)]
    emb = ranker.encoder.encode(passages)
    order = list(range(23))
    for s, e in sliding_windows(23, 8, 3):
        ids = order[s:e]
        perm = _hf_reference(model, projector, ranker.tokenizer, ranker.prompt(query, ids), emb[ids],
                             ranker.placeholder_id)
        order[s:e] = [ids[i] for i in perm]
    assert ranker.rerank(query, passages, window=8, stride=3) == order
