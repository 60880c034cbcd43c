import os

# Every test session gets 8 fake CPU devices so sharded paths run on a (2, 4) mesh.
# Must be set before jax is imported anywhere.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

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
