"""Atomically written outputs get the mode a plain open(..., "w") would give (umask), or keep the
mode of the file they replace; no temp file is left behind."""
from __future__ import annotations

import os
import stat

import numpy as np

from perank_jax.core.atomic import atomic_text
from perank_jax.weights.io import save_safetensors_atomic


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_new_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_text(tmp_path / "run.trec", "x\n")
        save_safetensors_atomic({"w": np.zeros(2, np.float32)}, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "run.trec") == 0o644
    assert _mode(tmp_path / "w.safetensors") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.trec", "w.safetensors"]


def test_replaced_files_keep_their_mode(tmp_path):
    for name, write in (("a.txt", lambda p: atomic_text(p, "new\n")),
                        ("b.safetensors", lambda p: save_safetensors_atomic({"w": np.ones(1, np.float32)}, p))):
        p = tmp_path / name
        p.write_text("old")
        os.chmod(p, 0o640)
        write(p)
        assert _mode(p) == 0o640 and p.read_bytes() != b"old"


def test_a_replaced_output_directory_never_loses_a_users_file_and_is_not_private(tmp_path):
    from perank_jax.core.atomic import fresh_temp, replace_dir
    out = tmp_path / "hf"
    (tmp_path / "hf.tmp-convert").mkdir()                 # a user's folder named like an old temp name
    (tmp_path / "hf.tmp-convert" / "mine.txt").write_text("keep")
    old = os.umask(0o022)
    try:
        new = fresh_temp(out, directory=True)
        (new / "config.json").write_text("{}")
        replace_dir(new, out, ours=["config.json"])          # a new directory: the umask's mode, not 0700
        assert _mode(out) == 0o755 and (out / "config.json").read_text() == "{}"
        again = fresh_temp(out, directory=True)
        (again / "config.json").write_text('{"v": 2}')
        replace_dir(again, out, ours=["config.json"])        # an earlier output of the same kind: replaced
        assert (out / "config.json").read_text() == '{"v": 2}'
        (out / "notes.txt").write_text("the user's")
        third = fresh_temp(out, directory=True)
        (third / "config.json").write_text('{"v": 3}')
        import pytest
        with pytest.raises(ValueError, match="holds files this command did not write \\(notes.txt\\)"):
            replace_dir(third, out, ours=["config.json"])
    finally:
        os.umask(old)
    assert (out / "notes.txt").read_text() == "the user's" and (out / "config.json").read_text() == '{"v": 2}'
    assert (tmp_path / "hf.tmp-convert" / "mine.txt").read_text() == "keep"


def test_the_embedding_cache_files_follow_the_umask(tmp_path, minilm_dir):
    from perank_jax.data.embcache_build import build_embedding_cache
    from fixtures import tiny_bert
    tiny_bert(tmp_path / "enc", minilm_dir)
    corpus = tmp_path / "c.tsv"
    corpus.write_text("d1\tcats purr\nd2\tdogs bark\n")
    old = os.umask(0o022)
    try:
        out = build_embedding_cache(tmp_path / "enc", corpus, tmp_path / "cache", max_length=64, progress=False)
    finally:
        os.umask(old)
    assert {p.name: _mode(p) for p in out.iterdir()} == {n: 0o644 for n in
                                                          ("embeddings.npy", "docids.txt", "metadata.json")}
