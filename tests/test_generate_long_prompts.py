"""Long-prompt generation (fine prompt buckets, causal-block prefill over the prompt only, cache
carried in place) produces the same tokens as the old path, with a bounded number of compilations."""
import numpy as np
import pytest

from fixtures import make_tiny_hf_decoder
from perank_jax.inference import generate
from perank_jax.core.buckets import fine_bucket
from perank_jax.inference.generate import GENERATE_TRACES, greedy_generate
from perank_jax.models.decoder import attention, init_cache, self_attention
from perank_jax.weights.decoder import load_decoder


def next_bucket(n: int, min_size: int = 16, linear_after: int = 1024) -> int:
    """The old prompt bucket (the reference): powers of two from `min_size`, then multiples of 1,024."""
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    size = min_size
    while size < n and size < linear_after:
        size *= 2
    if size >= n:
        return size
    return -(-n // linear_after) * linear_after


def _old_path(dec, prompt, max_new, eos):
    """The generation path before long-prompt work: the prompt padded to next_bucket (powers of
    two, then multiples of 1,024), a cache of bucket + max_new slots, the prefill attending over
    the whole cache (empty tail included), then one cached forward per token."""
    T = next_bucket(len(prompt))
    ids = np.zeros((1, T), np.int32)
    ids[0, :len(prompt)] = prompt
    cache = dec.init_cache(1, T + max_new)
    pos = np.arange(T)[None]
    h, cache = dec.forward(dec.embed(ids), pos, pos < len(prompt), cache)
    tok = int(np.argmax(np.asarray(dec.head(h[:, len(prompt) - 1:len(prompt)]))[0, 0]))
    out = [tok]
    while len(out) < max_new and tok not in eos:
        h, cache = dec.forward(dec.embed(np.array([[tok]])), np.array([[len(prompt) + len(out) - 1]]),
                               np.ones((1, 1), bool), cache)
        tok = int(np.argmax(np.asarray(dec.head(h))[0, 0]))
        out.append(tok)
    return out


def _new_path(dec, prompts, max_new, eos):
    out, n = greedy_generate(dec.graphdef, dec.state, prompts, max_new, eos)
    return [list(map(int, out[b, :n[b]])) for b in range(len(prompts))]


def test_fine_buckets_pad_at_most_an_eighth_and_stay_few():
    sizes = {fine_bucket(n) for n in range(1, 8193)}
    assert len(sizes) <= 7 + 3 * 8                    # 16..1024, then 8 per doubling up to 8,192
    assert fine_bucket(2090) == 2304 and fine_bucket(2127) == 2304 and next_bucket(2090) == 3072
    for n in range(1, 8193, 7):
        b = fine_bucket(n)
        assert b >= n and fine_bucket(b) == b
        assert b <= max(1024, n * 9 / 8 + 128)
    assert [fine_bucket(n) for n in (1, 16, 17, 1024, 1025)] == [16, 16, 32, 1024, 1152]


@pytest.mark.parametrize("window", [None, 37, 200])
def test_causal_block_attention_equals_full_attention_on_padded_rows(window):
    import jax.numpy as jnp
    rng = np.random.RandomState(0)
    B, T, H, K, hd = 3, 333, 6, 2, 8
    q, k, v = (jnp.asarray(rng.randn(B, T, n, hd).astype(np.float32)) for n in (H, K, K))
    lengths = np.array([333, 200, 5])
    pos = np.broadcast_to(np.arange(T), (B, T)).astype(np.int32)
    k_pos = np.where(pos < lengths[:, None], pos, -1).astype(np.int32)
    full = np.asarray(attention(q, k, v, pos, k_pos, window))
    for block in (None, 64, 100):
        got = np.asarray(self_attention(q, k, v, pos, k_pos, window, block=block))
        valid = pos < lengths[:, None]
        np.testing.assert_allclose(got[valid], full[valid], rtol=0, atol=2e-6)


@pytest.mark.parametrize("model_type,kw", [
    ("llama", dict(num_attention_heads=4, num_key_value_heads=2)),
    ("mistral", dict(num_attention_heads=6, num_key_value_heads=2, hidden_size=48, sliding_window=40)),
])
def test_generation_equals_old_path_token_for_token_on_tiny_model(tmp_path, model_type, kw):
    make_tiny_hf_decoder(tmp_path, model_type, vocab_size=64, max_position_embeddings=4096, **kw)
    dec = load_decoder(tmp_path)
    rng = np.random.RandomState(3)
    prompts = [list(rng.randint(3, 64, n)) for n in (9, 300, 1100)]   # one block, several, a fine bucket
    eos = [2]
    for p in prompts:
        assert _new_path(dec, [p], 12, eos)[0] == _old_path(dec, p, 12, eos)
    # a batch of rows with different lengths (right padding inside one bucket) gives the same tokens
    batch = _new_path(dec, [prompts[1], prompts[1][:150]], 12, eos)
    assert batch[0] == _old_path(dec, prompts[1], 12, eos)
    assert batch[1] == _old_path(dec, prompts[1][:150], 12, eos)


def test_cache_is_prompt_bucket_plus_generated_tokens(tmp_path, monkeypatch):
    make_tiny_hf_decoder(tmp_path, "llama", vocab_size=64, max_position_embeddings=4096)
    dec = load_decoder(tmp_path)
    sizes = []

    def recording(cfg, batch, max_len, *a, **k):
        sizes.append(max_len)
        return init_cache(cfg, batch, max_len, *a, **k)
    monkeypatch.setattr(generate, "init_cache", recording)
    greedy_generate(dec.graphdef, dec.state, [[5] * 2090], 7, [2])
    assert sizes == [2304 + 6]                        # was 3,072 + 7


def test_prompts_inside_one_bucket_reuse_one_compilation(tmp_path):
    make_tiny_hf_decoder(tmp_path, "mistral", vocab_size=64, max_position_embeddings=4096)
    dec = load_decoder(tmp_path)
    rng = np.random.RandomState(2)
    before = GENERATE_TRACES.count
    for n in (1030, 1100, 1152):                     # all in the 1,152 bucket
        greedy_generate(dec.graphdef, dec.state, [list(rng.randint(3, 64, n))], 4, [2])
    assert GENERATE_TRACES.count == before + 1
    for n in (1153, 1200, 1290, 1300):               # buckets 1,280 and 1,408
        greedy_generate(dec.graphdef, dec.state, [list(rng.randint(3, 64, n))], 4, [2])
    assert GENERATE_TRACES.count == before + 3


@pytest.mark.slow
def test_smollm2_short_and_listwise_prompts_equal_old_path(smollm2_gguf):
    from perank_jax.evaluate.textlist import TextListwiseReranker
    dec = load_decoder(smollm2_gguf)
    r = TextListwiseReranker(dec, max_new_tokens=12)
    tok = dec.tokenizer
    short = tok(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    passages = ["Paris is the capital and largest city of France.",
                "The Eiffel Tower was completed in 1889 for the World's Fair.",
                "Berlin is the capital of Germany.", "Lyon is known for its cuisine."] * 3
    listwise = r.prompt_ids("what is the capital of france", passages)
    assert 300 < len(listwise) < 1024 and len(short) < 64
    for ids in (short, listwise):         # 12 tokens: the old path runs op by op, one eager forward per token
        assert _new_path(dec, [ids], 12, r.eos_ids)[0] == _old_path(dec, ids, 12, r.eos_ids)


@pytest.mark.parametrize("window", [None, 7])
def test_flash_call_has_the_same_masking_as_attention(window):
    """The jax.nn.dot_product_attention call used on GPU (cuDNN, bf16) masks like `attention`:
    checked here with the same call on XLA in float32."""
    import jax.numpy as jnp
    from perank_jax.models.attention import flash_self_attention, use_flash
    rng = np.random.RandomState(1)
    B, T, H, K, hd = 3, 50, 6, 2, 8
    q, k, v = (jnp.asarray(rng.randn(B, T, n, hd).astype(np.float32)) for n in (H, K, K))
    lengths = np.array([50, 20, 5])
    pos = np.broadcast_to(np.arange(T), (B, T)).astype(np.int32)
    k_pos = np.where(pos < lengths[:, None], pos, -1).astype(np.int32)
    valid = pos < lengths[:, None]
    want = np.asarray(attention(q, k, v, pos, k_pos, window))[valid]
    got = np.asarray(flash_self_attention(q, k, v, k_pos, window, implementation="xla"))[valid]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert not use_flash(jnp.float32) and (not use_flash(jnp.bfloat16) or __import__("jax").default_backend() == "gpu")


@pytest.mark.parametrize("heads,kv_heads,window", [(9, 3, None), (6, 2, 5), (8, 4, 40)])
def test_one_query_decoding_attention_equals_general_attention(heads, kv_heads, window):
    """The decoding step's form (one query per row: block-diagonal query matrix on CPU) gives
    what the general per-head form gives for the same query inside a two-query call."""
    import jax.numpy as jnp
    from perank_jax.models.attention import _one_query_attention
    rng = np.random.RandomState(4)
    B, S, hd = 2, 300, 16
    q = jnp.asarray(rng.randn(B, 1, heads, hd).astype(np.float32))
    k, v = (jnp.asarray(rng.randn(B, S, kv_heads, hd).astype(np.float32)) for _ in range(2))
    q_pos = np.array([[250], [100]], np.int32)
    k_pos = np.broadcast_to(np.where(np.arange(S) < 260, np.arange(S), -1), (B, S)).astype(np.int32)
    got = np.asarray(_one_query_attention(q, k, v, q_pos, k_pos, window))
    want = np.asarray(attention(jnp.concatenate([q, q], 1), k, v, np.concatenate([q_pos, q_pos], 1), k_pos,
                                window))[:, :1]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
