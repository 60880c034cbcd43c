"""An embedding cache whose files changed after `perank encode` wrote them is never used
silently: loading it for use (training's cache embedder, `load_embedding_cache`) refuses it
with one line naming the file and the rows and saying to rerun `perank encode`; rerunning
`perank encode` re-encodes only the damaged chunks and gives the bytes of an undamaged run.
A damaged progress file of an interrupted run is reported as damaged, not as other settings.
Driven as a user drives it: `perank encode ...` through cli.main (one real subprocess)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import perank_jax
from perank_jax.cli import main
from perank_jax.data.embcache import CacheError, load_embedding_cache
from perank_jax.data.embcache_build import build_embedding_cache
from fixtures import tiny_bert

N_DOCS, CHUNK = 23, 5          # chunks: rows 0-4, 5-9, 10-14, 15-19, 20-22


@pytest.fixture(scope="module")
def setup(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("corrupt")
    tiny_bert(root / "enc", minilm_dir, seed=0)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"passage {i} " + "on retrieval " * (i % 5)})
                              + "\n" for i in range(N_DOCS)))
    args = ["--encoder", str(root / "enc"), "--corpus", str(corpus), "--batch-size", "4",
            "--max-length", "64", "--chunk-size", str(CHUNK), "--quiet"]
    assert main(["encode", *args, "--out", str(root / "clean")]) == 0
    return root, corpus, args, root / "clean"


@pytest.fixture()
def encodes(setup, monkeypatch):
    """Counts the documents the dense encoder encodes (any instance, also inside the CLI)."""
    cls = type(perank_jax.load_encoder(setup[0] / "enc", max_length=64))
    seen = {"docs": 0}
    real = cls.encode

    def counting(self, texts, *a, **kw):
        seen["docs"] += len(texts)
        return real(self, texts, *a, **kw)
    monkeypatch.setattr(cls, "encode", counting)
    return seen


def copy(clean, dst):
    shutil.copytree(clean, dst)
    return dst


def overwrite_rows(d, rows, value=0.25):
    """Overwrite rows of embeddings.npy in place: same shape, dtype and size."""
    emb = np.load(d / "embeddings.npy", mmap_mode="r+")
    emb[rows] = value
    emb.flush()
    del emb


def one_line(err):
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


def same_files(a, b):
    for f in ("embeddings.npy", "docids.txt", "metadata.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_overwritten_rows_are_refused_for_use_and_only_their_chunk_is_encoded_again(setup, tmp_path, capsys,
                                                                                      encodes):
    root, corpus, args, clean = setup
    d = copy(clean, tmp_path / "cache")
    overwrite_rows(d, slice(6, 8))
    with pytest.raises(CacheError) as e:
        load_embedding_cache(d)
    msg = one_line(str(e.value))
    assert f"{d / 'embeddings.npy'}: checksum mismatch in rows 5-9 (chunk 2 of 5)" in msg
    assert "rerun `perank encode`" in msg
    from perank_jax.train.embeddings import cache_embedder     # the training path refuses it too
    with pytest.raises(CacheError, match=r"rows 5-9 \(chunk 2 of 5\)"):
        cache_embedder(d)
    capsys.readouterr()
    assert main(["encode", *args, "--out", str(d)]) == 0
    err = capsys.readouterr().err
    assert "rows 5-9 (chunk 2 of 5) did not match the checksum" in err, err
    assert encodes["docs"] == CHUNK                                       # one chunk, not the corpus
    same_files(d, clean)
    load_embedding_cache(d)
    encodes["docs"] = 0
    assert main(["encode", *args, "--out", str(d)]) == 0                  # whole again: nothing to do
    assert encodes["docs"] == 0


def test_damage_in_several_chunks_and_in_the_last_short_chunk_is_named_and_repaired(setup, tmp_path, capsys):
    root, corpus, args, clean = setup
    d = copy(clean, tmp_path / "cache")
    overwrite_rows(d, [1, 21])
    with pytest.raises(CacheError, match=r"rows 0-4 \(chunk 1 of 5\) and 1 more chunk"):
        load_embedding_cache(d)
    assert main(["encode", *args, "--out", str(d)]) == 0
    same_files(d, clean)


def test_changed_document_ids_are_refused_and_restored(setup, tmp_path):
    root, corpus, args, clean = setup
    d = copy(clean, tmp_path / "cache")
    ids = (d / "docids.txt").read_text().split("\n")
    ids[0], ids[1] = ids[1], ids[0]                                       # same count, same set
    (d / "docids.txt").write_text("\n".join(ids))
    with pytest.raises(CacheError, match=r"docids.txt: checksum mismatch .*rerun `perank encode`"):
        load_embedding_cache(d)
    assert main(["encode", *args, "--out", str(d)]) == 0
    same_files(d, clean)


def test_truncated_embeddings_are_refused_and_rebuilt(setup, tmp_path):
    root, corpus, args, clean = setup
    d = copy(clean, tmp_path / "cache")
    (d / "embeddings.npy").write_bytes((d / "embeddings.npy").read_bytes()[:-500])
    with pytest.raises(CacheError, match="corrupt or truncated.*rerun `perank encode`"):
        load_embedding_cache(d)
    assert main(["encode", *args, "--out", str(d)]) == 0
    same_files(d, clean)


def interrupted(setup, out, after_chunks=2):
    """A `perank encode` run stopped after `after_chunks` finished chunks."""
    root, corpus, _, _ = setup
    enc = perank_jax.load_encoder(root / "enc", max_length=64)
    real, calls = enc.encode, {"n": 0}

    def flaky(texts, batch_size=32, progress=False):
        calls["n"] += 1
        if calls["n"] > after_chunks:
            raise KeyboardInterrupt("simulated interruption")
        return real(texts, batch_size=batch_size)
    enc.encode = flaky
    with pytest.raises(KeyboardInterrupt):
        build_embedding_cache(enc, corpus, out, batch_size=4, chunk_size=CHUNK, progress=False)
    return out / ".partial"


def test_a_tampered_chunk_of_an_interrupted_run_is_encoded_again_on_resume(setup, tmp_path, encodes):
    root, corpus, args, clean = setup
    part = interrupted(setup, tmp_path / "cache")
    chunk = part / "chunk_000000.npy"
    a = np.load(chunk)
    np.save(chunk, np.zeros_like(a))                                      # same shape and dtype
    encodes["docs"] = 0
    assert main(["encode", *args, "--out", str(tmp_path / "cache")]) == 0
    assert encodes["docs"] == N_DOCS - CHUNK                              # chunk 0 again + the 3 missing
    same_files(tmp_path / "cache", clean)


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"version": 1}', b"\xff\xfe"])
def test_a_damaged_progress_file_is_reported_as_damaged_and_the_chunks_are_kept(setup, tmp_path, capsys, damage):
    root, corpus, args, clean = setup
    part = interrupted(setup, tmp_path / "cache")
    plan = part / "plan.json"
    plan.write_bytes(damage if isinstance(damage, bytes) else damage.encode())
    capsys.readouterr()
    assert main(["encode", *args, "--out", str(tmp_path / "cache")]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"{plan}: corrupt progress file" in err and f"delete {part}" in err, err
    assert "other settings" not in err
    assert sorted(p.name for p in part.glob("chunk_*.npy")) == ["chunk_000000.npy", "chunk_000001.npy"]


def test_corrupt_metadata_says_what_to_do(setup, tmp_path, capsys):
    root, corpus, args, clean = setup
    d = copy(clean, tmp_path / "cache")
    meta = json.loads((d / "metadata.json").read_text())
    meta["checksums"]["chunks"] = meta["checksums"]["chunks"][:2]        # no longer covers the rows
    (d / "metadata.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["encode", *args, "--out", str(d)]) == 2
    err = one_line(capsys.readouterr().err)
    assert "metadata.json: corrupt metadata" in err and "rerun `perank encode`" in err, err
    assert (d / "embeddings.npy").read_bytes() == (clean / "embeddings.npy").read_bytes()


def test_an_older_cache_without_chunk_checksums_is_checked_whole_then_upgraded(setup, tmp_path, capsys):
    root, corpus, args, clean = setup
    d = copy(clean, tmp_path / "cache")
    meta = json.loads((d / "metadata.json").read_text())
    del meta["checksums"]
    (d / "metadata.json").write_text(json.dumps(meta))
    load_embedding_cache(d)                                               # whole-file sha256 matches
    overwrite_rows(d, [12])
    with pytest.raises(CacheError, match="checksum mismatch.*older cache.*rerun `perank encode`"):
        load_embedding_cache(d)
    assert main(["encode", *args, "--out", str(d)]) == 0                 # every chunk encoded again
    same_files(d, clean)                                                  # ... and checksums added
    from perank_jax.data.embcache import CacheWarning
    legacy = copy(clean, tmp_path / "legacy")
    meta.pop("sha256")
    (legacy / "metadata.json").write_text(json.dumps(meta))
    with pytest.warns(CacheWarning, match="without checksums"):
        load_embedding_cache(legacy)


def test_encode_over_a_damaged_cache_in_a_subprocess_says_so_and_leaves_a_whole_cache(setup, tmp_path):
    """A real `python -m perank_jax.cli` run: no traceback, the repair reported on stderr."""
    root, corpus, args, clean = setup
    d = copy(clean, tmp_path / "cache")
    overwrite_rows(d, slice(15, 20), value=np.nan)
    r = subprocess.run([sys.executable, "-m", "perank_jax.cli", "encode", *args, "--out", str(d)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "rows 15-19 (chunk 4 of 5) did not match the checksum" in r.stderr and "Traceback" not in r.stderr
    same_files(d, clean)


def test_lazy_verification_checks_only_the_chunks_read_and_refuses_a_damaged_one_when_read(setup, tmp_path):
    """Reranking opens a cache with verify="lazy" (a query reads a few rows of what may be a
    many-GB corpus): a chunk is checked the first time one of its rows is read, once."""
    root, corpus, args, clean = setup
    d = copy(clean, tmp_path / "cache")
    overwrite_rows(d, [12])                                     # chunk 3 (rows 10-14)
    cache = load_embedding_cache(d, verify="lazy")              # opens: nothing read yet
    assert cache.verified_chunks == set()
    good = load_embedding_cache(clean)
    np.testing.assert_array_equal(cache.lookup(["d1", "d21", "d7"]), good.lookup(["d1", "d21", "d7"]))
    assert cache.verified_chunks == {0, 1, 4}
    with pytest.raises(CacheError) as e:
        cache.lookup(["d3", "d11"])
    assert f"{d / 'embeddings.npy'}: checksum mismatch in rows 10-14 (chunk 3 of 5)" in one_line(str(e.value))
    assert 2 not in cache.verified_chunks


def test_reranking_through_a_damaged_cache_chunk_is_one_error_not_a_ranking(setup, tmp_path):
    from perank_jax.inference.passage_vectors import passage_vectors
    root, corpus, args, clean = setup
    d = copy(clean, tmp_path / "cache")
    overwrite_rows(d, [0])
    cache = load_embedding_cache(d, verify="lazy")
    enc = perank_jax.load_encoder(root / "enc", max_length=64)
    (vecs,), *_ = passage_vectors(enc, [["x", "y"]], [["d6", "d16"]], cache)   # chunks 1 and 3: fine
    np.testing.assert_array_equal(vecs, load_embedding_cache(clean).lookup(["d6", "d16"]))
    with pytest.raises(CacheError, match=r"rows 0-4 \(chunk 1 of 5\)"):
        passage_vectors(enc, [["x", "y"]], [["d6", "d2"]], cache)
