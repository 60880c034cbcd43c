import os

# Every test session gets 8 fake CPU devices so sharded paths run on a (2, 4) mesh.
# Must be set before jax is imported anywhere.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One persistent XLA compilation cache for the whole run: the same tiny programs are otherwise
# compiled again by each test and each CLI subprocess, the bulk of the suite's time. The process
# that starts the run creates it; pytest-xdist workers and every process a test launches inherit it
# through the environment; the creator removes it when the run ends (pytest_sessionfinish).
# PERANK_TEST_COMPILE_CACHE=0 turns it off; a JAX_COMPILATION_CACHE_DIR set beforehand is used and kept.
_OWN_CACHE = (os.environ.get("PERANK_TEST_COMPILE_CACHE", "1") != "0"
              and "JAX_COMPILATION_CACHE_DIR" not in os.environ)
if _OWN_CACHE:
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="perank-jax-tests-xla-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

from fixtures import make_tiny_hf_decoder  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def smollm2_gguf():
    from perank_jax.weights.packaged import smollm2_gguf
    return smollm2_gguf()


@pytest.fixture(scope="session")
def minilm_dir():
    from perank_jax.weights.packaged import minilm_dir
    return minilm_dir()


@pytest.fixture(scope="session")
def mpnet_dir(tmp_path_factory):
    from perank_jax.weights.packaged import mpnet_dir
    return mpnet_dir(os.environ.get("PERANK_CACHE") or tmp_path_factory.mktemp("mpnet"))


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_gguf, tmp_path_factory):
    """SmolLM2-135M-Instruct converted from the packaged GGUF into an HF directory
    (float32 dequantised safetensors + tokenizer with its ChatML chat template)."""
    from perank_jax.weights.convert import gguf_to_hf_dir
    return gguf_to_hf_dir(smollm2_gguf, tmp_path_factory.mktemp("smollm2") / "hf")


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(smollm2_gguf, tmp_path_factory):
    """Only SmolLM2's tokenizer (a real chat tokenizer for tiny random models)."""
    from perank_jax.weights.gguf import GGUFSource
    out = tmp_path_factory.mktemp("smollm2_tok")
    GGUFSource(smollm2_gguf).tokenizer().save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory, smollm2_tokenizer_dir):
    """Tiny random Mistral (vocab = SmolLM2's 49152 so its real chat tokenizer fits)."""
    d = tmp_path_factory.mktemp("tiny_mistral")
    make_tiny_hf_decoder(d, "mistral", vocab_size=49152, tokenizer_dir=smollm2_tokenizer_dir,
                         bos_token_id=1, eos_token_id=2)
    return d


@pytest.fixture(scope="session")
def tiny_perank(tmp_path_factory):
    """(checkpoint dir, torch MistralForCausalLM, torch projector): a tiny random PE-Rank
    checkpoint (embed_mistral, d=32, 2 layers, mlp2x_gelu) whose config.json `encoder_name`
    points at a tiny random 32-d BERT directory; see tests/fixtures/."""
    from fixtures import tiny_encoder_dir, tiny_perank_checkpoint
    enc = tiny_encoder_dir(tmp_path_factory.mktemp("tiny_encoder"))
    return tiny_perank_checkpoint(tmp_path_factory.mktemp("perank_tiny"), emb_dim=32, encoder_name=str(enc))


@pytest.fixture(scope="session")
def tiny_perank_dir_32(tiny_perank):
    """The directory of `tiny_perank` alone (its 32-d tiny encoder is named in config.json)."""
    return tiny_perank[0]


@pytest.fixture(scope="session")
def tiny_perank_dir(tmp_path_factory, minilm_dir):
    """A tiny random PE-Rank checkpoint (embed_mistral, d=32, 2 layers, mlp2x_gelu) for 384-d
    all-MiniLM-L6-v2 embeddings (config.json encoder_name = the packaged MiniLM directory)."""
    from fixtures import tiny_perank_checkpoint
    path, _, _ = tiny_perank_checkpoint(tmp_path_factory.mktemp("perank_tiny384"), emb_dim=384,
                                        encoder_name=str(minilm_dir))
    return path


def pytest_sessionfinish(session, exitstatus):
    """The run's compilation cache goes with the run (removed by the process that made it)."""
    if _OWN_CACHE:
        import shutil
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
