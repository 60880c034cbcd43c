"""The Flax BERT and MPNet encoders reproduce HF transformers (torch): last hidden states of
tiny random models on right-padded batches, and pooled normalised embeddings of the real
all-MiniLM-L6-v2 and all-mpnet-base-v2 on varied texts."""
import numpy as np
import pytest
import torch

import perank_jax
from fixtures import tiny_bert, tiny_mpnet


def _right_padded(rng, lengths, T, pad_id, lo=3, hi=30000):
    ids = rng.integers(lo, hi, (len(lengths), T))
    mask = np.zeros((len(lengths), T), np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return np.where(mask == 1, ids, pad_id), mask


def _max_rel(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("make,pad_id,T", [(tiny_bert, 0, 70), (tiny_mpnet, 1, 120)],
                         ids=["bert", "mpnet"])
def test_tiny_random_model_last_hidden_states_match_torch(tmp_path, minilm_dir, make, pad_id, T):
    model = make(tmp_path, minilm_dir)
    enc = perank_jax.load_encoder(tmp_path, max_length=T)
    ids, mask = _right_padded(np.random.default_rng(0), [T, T - 17, 6], T, pad_id)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    got = enc.hidden_states(ids, mask)
    real = mask.astype(bool)
    assert _max_rel(got[real], ref[real]) <= 1e-5
    assert _max_rel(got, ref) <= 1e-5                   # padded positions too


TEXTS = [
    "hi",
    "What is the boiling point of water at sea level?",
    "Café naïve façade — Zürich, São Paulo, Øresund; 東京は日本の首都です。 Ценность 😀 ✓",
    "Dense retrieval maps queries and passages into one vector space so that relevant passages "
    "lie close to their queries; a listwise reranker then orders the candidates. " * 40,
]


def _torch_pooled(d, texts, max_length):
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModel.from_pretrained(str(d)).eval()
    b = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**b).last_hidden_state
    m = b["attention_mask"][..., None].float()
    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, dim=-1).numpy(), b["attention_mask"].sum(1).numpy()


def _check_real(d, texts, max_length):
    enc = perank_jax.load_encoder(d, max_length=max_length)
    assert enc.pooling == "mean" and enc.normalize
    got = enc.encode(texts, batch_size=len(texts))
    ref, lengths = _torch_pooled(d, texts, max_length)
    assert lengths.max() == max_length                  # the long text was truncated
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999, cos


@pytest.mark.slow
def test_real_minilm_pooled_embeddings_match_torch(minilm_dir):
    _check_real(minilm_dir, TEXTS, 512)


@pytest.mark.slow
def test_real_mpnet_pooled_embeddings_match_torch(mpnet_dir):
    _check_real(mpnet_dir, TEXTS, 96)
