"""Atomically written outputs get the mode a plain open(..., "w") would give (umask), or keep the
mode of the file they replace; no temp file is left behind."""
from __future__ import annotations

import os
import stat

import numpy as np

from perank_jax.atomic import atomic_text
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
