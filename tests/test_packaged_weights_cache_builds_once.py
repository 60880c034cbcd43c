"""The weights cache behind `packaged:smollm2`: the GGUF is converted once per cache, concurrent
callers wait for the one conversion instead of racing, a damaged entry is rebuilt, and the entry
holds the same weights and tokens as the GGUF (tests/test_smollm2_real_weights.py compares them)."""
import threading
import time

from perank_jax.weights import convert, packaged


def fake_conversions(monkeypatch):
    """Replace the (10 s) conversion by a slow stand-in that records each call."""
    calls = []

    def convert_slowly(gguf, out):
        calls.append(out)
        time.sleep(0.3)                         # wide enough for a second caller to arrive meanwhile
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(b"weights")
        return out
    monkeypatch.setattr(convert, "gguf_to_hf_dir", convert_slowly)
    return calls


def test_concurrent_callers_convert_once_and_get_one_complete_entry(tmp_path, monkeypatch):
    calls = fake_conversions(monkeypatch)
    got = []
    threads = [threading.Thread(target=lambda: got.append(packaged.smollm2_dir(tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and len(set(got)) == 1 and len(got) == 3, (calls, got)
    entry = got[0]
    assert entry.parent == tmp_path and (entry / packaged.COMPLETE).exists()
    assert packaged.smollm2_dir(tmp_path) == entry and len(calls) == 1         # later calls only look


def test_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    calls = fake_conversions(monkeypatch)
    entry = packaged.smollm2_dir(tmp_path)
    (entry / "model.safetensors").unlink()
    assert packaged.smollm2_dir(tmp_path) == entry and len(calls) == 2
    assert (entry / "model.safetensors").read_bytes() == b"weights"


def test_packaged_smollm2_names_the_cached_conversion(tmp_path, monkeypatch):
    fake_conversions(monkeypatch)
    monkeypatch.setenv("PERANK_CACHE", str(tmp_path))
    path = packaged.resolve_model_path("packaged:smollm2")
    assert path == str(packaged.smollm2_dir()) and path.startswith(str(tmp_path))
    assert packaged.smollm2_gguf().name in path or packaged.smollm2_gguf().stem in path
