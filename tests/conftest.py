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

# One weights cache for the run (PERANK_CACHE: SmolLM2 converted from its GGUF, mpnet extracted from its
# zip parts), made by the first process that needs an entry (under a lock) and read by every worker and
# every CLI the tests launch; removed at the end like the compilation cache. A PERANK_CACHE set
# beforehand is used and kept (a developer's warm cache).
_OWN_WEIGHTS_CACHE = "PERANK_CACHE" not in os.environ
if _OWN_WEIGHTS_CACHE:
    import tempfile
    os.environ["PERANK_CACHE"] = tempfile.mkdtemp(prefix="perank-jax-tests-weights-")

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
def mpnet_dir():
    from perank_jax.weights.packaged import mpnet_dir
    return mpnet_dir()


@pytest.fixture(scope="session")
def smollm2_hf_dir():
    """SmolLM2-135M-Instruct converted from the packaged GGUF into an HF directory (float32
    dequantised safetensors + tokenizer with its ChatML chat template): `packaged:smollm2`, the
    run's cached conversion. Read only."""
    from perank_jax.weights.packaged import smollm2_dir
    return smollm2_dir()


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(smollm2_hf_dir, tmp_path_factory):
    """Only SmolLM2's tokenizer files (a real chat tokenizer for tiny random models)."""
    import shutil
    out = tmp_path_factory.mktemp("smollm2_tok")
    for f in smollm2_hf_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors", ".complete"):
            shutil.copy(f, out)
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
    """The run's compilation and weights caches go with the run (removed by the process that made them)."""
    import shutil
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    if _OWN_WEIGHTS_CACHE:
        shutil.rmtree(os.environ["PERANK_CACHE"], ignore_errors=True)
