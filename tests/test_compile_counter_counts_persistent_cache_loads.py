"""The server's compile counter (serve.metrics.compile_count, behind perank_compiles_after_warmup_total)
counts a program loaded from jax's persistent compilation cache as it counts a compiled one (jax's
backend-compile event times the cache look-up and the compile together): with a cache directory set
(as the test suite sets one for every run, and a deployment may), "nothing compiles after warm-up"
still means nothing was built while serving."""
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import jax, jax.numpy as jnp
    from perank_jax.serve.metrics import compile_count, install_compile_listener
    install_compile_listener()
    f = lambda x: jnp.tanh(x @ x.T) * 3.0
    before = compile_count()
    jax.jit(f)(jnp.ones((8, 8))).block_until_ready()
    compiled = compile_count() - before
    jax.clear_caches()                                      # the next call must build the program again
    before = compile_count()
    jax.jit(f)(jnp.ones((8, 8))).block_until_ready()
    print(compiled, compile_count() - before)
""")


def run_child(cache_dir) -> tuple[int, int]:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache_dir), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first, again = map(int, out.stdout.split())
    return first, again


def test_a_program_loaded_from_the_persistent_cache_counts_as_built(tmp_path):
    first, again = run_child(tmp_path / "cache")
    assert first >= 1 and again == first              # rebuilt in-process: a load from the cache, counted
    assert any((tmp_path / "cache").iterdir())         # it was the persistent cache that served it
    first, again = run_child(tmp_path / "cache")       # a fresh process: every program a cache hit
    assert first >= 1 and again == first
