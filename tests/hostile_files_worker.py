"""Run the model-file loaders on hostile inputs under a 2 GiB address-space limit (run by
tests/test_hostile_model_files.py in a subprocess: python hostile_files_worker.py OUT_JSON).

Every input must end as a value or as ONE ValueError subclass with a one-line message, within
seconds each, under RLIMIT_AS = 2 GiB. The limit is honest about JAX: the loaders import jax
(weights/io.py places arrays with it), and jax + jaxlib reserve about 1.5 GB of address space at
import (VmPeak measured 1.52 GB after `import jax; jnp.zeros(3).sum()`), so the hostile inputs get
the remaining ~0.5 GB; MemoryError counts as a failure here, so a loader that allocates what a
file claims (2^62 elements) fails this worker.

Two parts: the named hostile files of issue 24 (each must be refused with its message fragment) and
a hypothesis property run (fixed seed) over random bytes and random mutations of tiny valid
safetensors / GGUF / config.json / YAML files.
"""
from __future__ import annotations

import json
import resource
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

LIMIT = 2 << 30
CASE_SECONDS = 10          # a hang guard only; the worker reports each case's time
EXAMPLES = 40              # hypothesis examples per loader
resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

import numpy as np  # noqa: E402

from perank_jax.core.config import ConfigError  # noqa: E402
from perank_jax.core.config_files import apply_overrides, parse_yaml, read_config_json  # noqa: E402
from perank_jax.models.decoder import DecoderConfig  # noqa: E402
from perank_jax.models.encoder import EncoderConfig  # noqa: E402
from perank_jax.train.config import TrainConfig  # noqa: E402
from perank_jax.core.config import from_dict  # noqa: E402
from perank_jax.weights.gguf import GGUFSource  # noqa: E402
from perank_jax.weights.io import SafetensorsFile  # noqa: E402
from perank_jax.weights.perank_config import PERankConfig  # noqa: E402

from helpers_hostile import VALID_CONFIG, VALID_YAML, gguf_bytes, named_cases, valid_safetensors  # noqa: E402


class Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise Hang


signal.signal(signal.SIGALRM, _alarm)


# ------------------------------------------------------------------------------- loaders
def load_safetensors(path: Path):
    f = SafetensorsFile(path)
    for k in f.keys():
        np.asarray(f.get(k)).sum()


def load_gguf(path: Path):
    GGUFSource(path).hf_config()


def load_config_json(path: Path):
    conf = read_config_json(path.parent)
    DecoderConfig.from_hf({"model_type": "llama", **conf}, source=str(path))
    EncoderConfig.from_hf({**conf, "model_type": "bert"}, source=str(path))
    PERankConfig.from_dict(conf, str(path))


def load_yaml_override(path: Path):
    text = path.read_bytes().decode("utf-8", "replace")
    data = apply_overrides({}, [f"optim={text}"])
    from_dict(TrainConfig, data) if isinstance(data.get("optim"), dict) else None


def load_yaml_file(path: Path):
    from perank_jax.core.config_files import load_yaml
    load_yaml(TrainConfig, path)


LOADERS = {"safetensors": load_safetensors, "gguf": load_gguf, "config.json": load_config_json,
           "yaml-override": load_yaml_override, "yaml-file": load_yaml_file}


def run_case(kind: str, path: Path) -> dict:
    """{'outcome': 'ok' | 'refused' | 'crash', 'type', 'message', 'seconds'} of one loader call."""
    t = time.perf_counter()
    signal.alarm(CASE_SECONDS)
    try:
        LOADERS[kind](path)
        out = {"outcome": "ok", "type": "", "message": ""}
    except ValueError as e:
        msg = str(e)
        good = bool(msg.strip()) and "\n" not in msg
        out = {"outcome": "refused" if good else "crash", "type": type(e).__name__, "message": msg}
    except Hang:
        out = {"outcome": "crash", "type": "Hang", "message": f"ran past {CASE_SECONDS} s"}
    except BaseException as e:  # noqa: BLE001 - what this worker exists to catch: any other type
        out = {"outcome": "crash", "type": type(e).__name__, "message": str(e)[:300]}
    finally:
        signal.alarm(0)
    out["seconds"] = time.perf_counter() - t
    return out


# ------------------------------------------------------------------------------- the property run
def fuzz(tmp: Path, results: list) -> None:
    from hypothesis import HealthCheck, given, seed, settings, strategies as st

    bases = {"safetensors": valid_safetensors(), "gguf": gguf_bytes(tmp),
             "config.json": json.dumps(VALID_CONFIG).encode(), "yaml-override": VALID_YAML,
             "yaml-file": VALID_YAML}
    mutation = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
        st.tuples(st.just("u64"), st.integers(0, 1 << 20), st.sampled_from([0, 1, 2 ** 31, 2 ** 62, 2 ** 64 - 1])),
        st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.integers(0, 255)))

    def mutate(data: bytes, muts) -> bytes:
        b = bytearray(data)
        for op, pos, v in muts:
            pos = pos % (len(b) + 1)
            if op == "flip" and b:
                b[pos % len(b)] ^= v
            elif op == "cut":
                del b[pos:]
            elif op == "u64":
                b[pos:pos + 8] = struct.pack("<Q", v)
            elif op == "insert":
                b[pos:pos] = bytes([v])
        return bytes(b)

    counter = iter(range(10 ** 9))

    def check(kind, random, raw, muts):
        data = raw if random else mutate(bases[kind], muts)
        d = tmp / f"case{next(counter)}"
        d.mkdir()
        path = d / {"safetensors": "m.safetensors", "gguf": "m.gguf", "config.json": "config.json"}.get(kind, "c.yaml")
        path.write_bytes(data)
        r = run_case(kind, path)
        r.update(case="random bytes" if random else f"mutated {kind}: {muts}", kind=kind)
        if kind == "safetensors":           # refused exactly when the safetensors library refuses
            from safetensors import safe_open
            try:
                with safe_open(str(path), "numpy"):
                    lib_ok = True
            except Exception:  # noqa: BLE001
                lib_ok = False
            r["library_agrees"] = lib_ok == (r["outcome"] == "ok") or (lib_ok and "unsupported dtype" in r["message"])
        results.append(r)

    for kind in sorted(LOADERS):            # each loader gets its own fixed-seed examples
        seed(24)(settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))(
            given(kind=st.just(kind), random=st.booleans(), raw=st.binary(max_size=200),
                  muts=st.lists(mutation, min_size=1, max_size=4))(check)))()


def main(out_json: str) -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        named = []
        for i, (case, kind, data, fragment) in enumerate(named_cases(tmp)):
            d = tmp / f"named{i}"
            d.mkdir()
            path = d / {"safetensors": "adapter.safetensors", "gguf": "m.gguf",
                        "config.json": "config.json"}.get(kind, "c.yaml")
            path.write_bytes(data)
            r = run_case(kind, path)
            r.update(case=case, kind=kind, fragment=fragment)
            named.append(r)
        fuzzed: list = []
        fuzz(tmp, fuzzed)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(out_json).write_text(json.dumps({"named": named, "fuzzed": fuzzed, "peak_rss_mb": peak_kb // 1024,
                                          "limit_gb": LIMIT / 2 ** 30}))


if __name__ == "__main__":
    main(sys.argv[1])
