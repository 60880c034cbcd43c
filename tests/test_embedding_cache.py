"""Embedding cache: an interrupted run resumes without recomputing finished chunks and gives the
same files as one run; a partial, corrupt or mismatched cache is refused with a clear message."""
import json

import numpy as np
import pytest

import perank_jax
from perank_jax.cli import main
from perank_jax.data.embcache import CacheError, load_embedding_cache
from perank_jax.data.embcache_build import build_embedding_cache
from fixtures import tiny_bert

N_DOCS, CHUNK = 23, 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("cache")
    tiny_bert(root / "enc", minilm_dir, seed=0)
    tiny_bert(root / "other", minilm_dir, seed=1)
    corpus = root / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i in range(N_DOCS):
            rec = {"_id": f"d{i}", "text": f"passage number {i} " + "about dense retrieval " * (i % 7)}
            if i % 3 == 0:
                rec["title"] = f"Title {i}"
            f.write(json.dumps(rec) + "\n")
    enc = perank_jax.load_encoder(root / "enc", max_length=64)
    one = build_embedding_cache(enc, corpus, root / "one", batch_size=4, chunk_size=CHUNK, progress=False)
    return root, corpus, enc, one


def test_cache_holds_the_encoder_embeddings_with_beir_title_format(setup):
    root, corpus, enc, one = setup
    cache = load_embedding_cache(one, expect_encoder=root / "enc", expect_dim=enc.dim)
    assert len(cache) == N_DOCS and cache.docids[:2] == ["d0", "d1"]
    assert isinstance(cache.embeddings, np.memmap)
    want = enc.encode(["Title: Title 0 Content: passage number 0", "passage number 1 about dense retrieval"])
    assert np.abs(cache.lookup(["d0", "d1"]) - want).max() < 1e-6
    meta = cache.metadata
    assert (meta["pooling"], meta["normalize"], meta["max_length"], meta["dim"], meta["count"]) == \
        ("mean", True, 64, enc.dim, N_DOCS)
    assert meta["encoder"]["architecture"] == "bert" and meta["corpus"]["title_format"] is True


def test_interrupted_run_resumes_without_recomputing_and_matches_one_run(setup, monkeypatch):
    root, corpus, enc, one = setup
    out = root / "resumed"
    calls = {"n": 0}
    real_encode = enc.encode

    def flaky(texts, batch_size=32, progress=False):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_encode(texts, batch_size=batch_size)

    monkeypatch.setattr(enc, "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_embedding_cache(enc, corpus, out, batch_size=4, chunk_size=CHUNK, progress=False)
    # nothing that looks complete was left behind
    assert not (out / "metadata.json").exists() and not (out / "embeddings.npy").exists()
    with pytest.raises(CacheError, match=r"incomplete embedding cache \(interrupted run, 2 chunk"):
        load_embedding_cache(out)
    calls["n"] = 10
    build_embedding_cache(enc, corpus, out, batch_size=4, chunk_size=CHUNK, progress=False)
    assert calls["n"] - 10 == -(-N_DOCS // CHUNK) - 2      # only the 3 missing chunks were encoded
    for f in ("embeddings.npy", "docids.txt", "metadata.json"):
        assert (out / f).read_bytes() == (one / f).read_bytes(), f
    assert not (out / ".partial").exists()


def test_corrupt_caches_are_refused(setup, tmp_path):
    import shutil
    _, _, _, one = setup

    def broken(name, damage):
        d = tmp_path / name
        shutil.copytree(one, d)
        damage(d)
        return d

    trunc = broken("trunc", lambda d: (d / "embeddings.npy").write_bytes((d / "embeddings.npy").read_bytes()[:-100]))
    with pytest.raises(CacheError, match="corrupt or truncated"):
        load_embedding_cache(trunc)
    meta = broken("meta", lambda d: (d / "metadata.json").write_text("{not json"))
    with pytest.raises(CacheError, match="corrupt metadata"):
        load_embedding_cache(meta)
    ids = broken("ids", lambda d: (d / "docids.txt").write_text("d0\nd1\n"))
    with pytest.raises(CacheError, match="2 ids"):
        load_embedding_cache(ids)

    def flip(d):
        b = bytearray((d / "embeddings.npy").read_bytes())
        b[-7] ^= 0xFF
        (d / "embeddings.npy").write_bytes(bytes(b))
    flipped = broken("flip", flip)
    load_embedding_cache(flipped, verify=False)                 # shape checks pass ...
    with pytest.raises(CacheError, match=r"checksum mismatch in rows 20-22 \(chunk 5 of 5\)"):
        load_embedding_cache(flipped)                           # ... the per-chunk checksum does not
    with pytest.raises(CacheError, match="not an embedding cache"):
        load_embedding_cache(tmp_path)


def test_mismatched_caches_are_refused(setup):
    root, corpus, enc, one = setup
    with pytest.raises(CacheError, match=r"dim 32, expected 768"):
        load_embedding_cache(one, expect_dim=768)
    with pytest.raises(CacheError, match="made by encoder 'enc'"):
        load_embedding_cache(one, expect_encoder=root / "other")
    with pytest.raises(CacheError, match="expected 'bge-base-en'"):
        load_embedding_cache(one, expect_encoder="bge-base-en")
    load_embedding_cache(one, expect_encoder="enc")
    load_embedding_cache(one, expect_encoder=enc)
    with pytest.raises(CacheError, match="already holds a finished cache of a different run"):
        build_embedding_cache(root / "other", corpus, one, max_length=64, chunk_size=CHUNK, progress=False)


def test_cli_encode_writes_the_same_cache_and_reports_bad_input(setup, capsys):
    root, corpus, _, one = setup
    out = root / "cli"
    rc = main(["encode", "--encoder", str(root / "enc"), "--corpus", str(corpus), "--out", str(out),
               "--batch-size", "4", "--max-length", "64", "--chunk-size", str(CHUNK), "--quiet"])
    assert rc == 0
    assert (out / "embeddings.npy").read_bytes() == (one / "embeddings.npy").read_bytes()
    bad = root / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "  "}\n')
    rc = main(["encode", "--encoder", str(root / "enc"), "--corpus", str(bad), "--out", str(root / "x"),
               "--max-length", "64", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl:2" in err and "empty text" in err and len(err.strip().splitlines()) == 1
