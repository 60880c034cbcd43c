"""Reading weights: lazy safetensors (single file or sharded index), key-map
checks with one error listing every problem, and placement of each tensor
directly onto its sharding (only the slices a device needs are read)."""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Callable, Iterable

import jax
import ml_dtypes
import numpy as np

from perank_jax.core.config_files import read_json_object

MAX_HEADER_BYTES = 100_000_000     # the safetensors library's own header limit

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def load_hf_tokenizer(directory):
    """`AutoTokenizer.from_pretrained(directory)` (never remote code) with transformers' warnings
    silenced: e.g. a PE-Rank checkpoint's config.json says model_type `embed_mistral`, which
    transformers does not know and warns about on every load; errors still raise."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(level)


class WeightError(ValueError):
    """Missing, unexpected, wrong-shape, non-finite or unreadable weights."""


class SafetensorsFile:
    """A safetensors file whose header the `safetensors` library has validated (its `safe_open`:
    a mapping of tensors with known dtypes, integer offsets that tile the data exactly, sizes that
    match the shapes, the file neither truncated nor padded); tensors are np.memmap views of those
    validated offsets, so nothing is read until sliced and each device reads only its own slice."""

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open
        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="numpy") as f:   # the library's checks, all of them
                metadata = f.metadata() or {}
        except OSError as e:
            raise WeightError(f"{self.path}: cannot read ({e.strerror or e})") from None
        except Exception as e:   # safetensors_rust.SafetensorError: one line naming the file
            cut = _past_the_end(self.path)
            where = f"tensor {cut!r} extends past the end of the file (truncated?); " if cut else ""
            raise WeightError(f"{self.path}: not a valid safetensors file ({where}{_one_line(e)})") from None
        with open(self.path, "rb") as f:    # the same header, now known to be well formed
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self.metadata = metadata
        self._base = 8 + n
        self._entries = header
        for k, e in header.items():
            if e["dtype"] not in _ST_DTYPES:
                raise WeightError(f"{self.path}: tensor {k!r} has unsupported dtype {e['dtype']} "
                                  f"(supported: {', '.join(_ST_DTYPES)})")

    def keys(self):
        return self._entries.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def get(self, key: str) -> np.ndarray:
        e = self._entries[key]
        dtype = np.dtype(_ST_DTYPES[e["dtype"]])
        start, _ = e["data_offsets"]
        shape = tuple(e["shape"])
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self._base + start, shape=shape)

    def finite(self, key: str) -> np.ndarray:
        """Tensor `key` as float32, or a WeightError naming the file and tensor if it holds NaN / inf."""
        a = np.asarray(self.get(key), np.float32)
        if not np.all(np.isfinite(a)):
            raise WeightError(f"{self.path}: tensor {key!r} contains NaN or Inf")
        return a


def _past_the_end(path: Path) -> str | None:
    """For the message only, once the library has refused a file: the tensor whose data ends past the
    end of the file (a truncated download), if the header is readable enough to tell."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, MAX_HEADER_BYTES):
                return None
            header = json.loads(f.read(n))
        end, key = max((e["data_offsets"][1], k) for k, e in header.items() if k != "__metadata__")
        return key if 8 + n + end > size else None
    except Exception:   # noqa: BLE001 - a header too damaged to tell: the library's message stands alone
        return None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class SafetensorsCheckpoint:
    """All tensors of a directory: model.safetensors, a sharded *.safetensors.index.json,
    or every *.safetensors file in it."""

    def __init__(self, directory: str | os.PathLike, prefer: Iterable[str] = ("model.safetensors",)):
        d = Path(directory)
        if not d.is_dir():
            raise WeightError(f"{d}: not a directory")
        files: list[Path] = []
        index = sorted(d.glob("*.safetensors.index.json"))
        if index:
            wm = read_json_object(index[0], WeightError).get("weight_map")
            if not isinstance(wm, dict) or not all(isinstance(v, str) and v not in ("", "..") and Path(v).name == v
                                                   for v in wm.values()):
                raise WeightError(f"{index[0]}: not a valid safetensors index (`weight_map` must map tensor "
                                  "names to shard file names in the same directory)")
            files = [d / f for f in sorted(set(wm.values()))]
            missing = [str(f) for f in files if not f.exists()]
            if missing:
                raise WeightError(f"{index[0]} names shard files that are missing: {missing}")
        else:
            for name in prefer:
                if (d / name).exists():
                    files = [d / name]
                    break
            else:
                files = sorted(d.glob("*.safetensors"))
        if not files:
            pickles = [p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
            if pickles:
                raise WeightError(
                    f"{d}: only pickle weights found ({', '.join(sorted(pickles))}); perank-jax reads "
                    "safetensors only (pickle can run arbitrary code). Convert once with "
                    "`model.save_pretrained(dir, safe_serialization=True)` in transformers.")
            raise WeightError(f"{d}: no *.safetensors weights found")
        self.files = [SafetensorsFile(f) for f in files]
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for k in f.keys():
                self._where[k] = f

    def keys(self):
        return self._where.keys()

    def shape(self, key: str):
        return self._where[key].shape(key)

    def get(self, key: str) -> np.ndarray:
        return self._where[key].get(key)

    def __contains__(self, key):
        return key in self._where


def check_keymap(source_name: str, present: dict[str, tuple[int, ...]],
                 expected: dict[str, tuple[int, ...]], optional: Iterable[str] = (),
                 ignore: Callable[[str], bool] = lambda k: False) -> None:
    """One WeightError listing every missing, unexpected and wrong-shape tensor."""
    optional = set(optional)
    missing = sorted(k for k in expected if k not in present and k not in optional)
    unexpected = sorted(k for k in present if k not in expected and not ignore(k))
    wrong = sorted(f"{k}: file {tuple(present[k])} != expected {tuple(expected[k])}"
                   for k in expected if k in present and tuple(present[k]) != tuple(expected[k]))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"unexpected ({len(unexpected)}): {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
        if wrong:
            parts.append(f"wrong shape ({len(wrong)}): {wrong[:20]}")
        raise WeightError(f"{source_name}: weights do not match the model config; " + "; ".join(parts))


def place(read: Callable[[tuple], np.ndarray], shape: tuple[int, ...], dtype, sharding=None) -> jax.Array:
    """Build a jax.Array of `shape` where each device reads only its own slice via `read(index)`.

    `read` takes a tuple of slices (one per dim) and returns that block as numpy.
    """
    dtype = np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
    if sharding is None:
        return jax.device_put(np.asarray(read(tuple(slice(None) for _ in shape)), dtype=dtype))
    return jax.make_array_from_callback(
        shape, sharding, lambda idx: np.asarray(read(idx), dtype=dtype))


def save_safetensors_atomic(tensors: dict[str, np.ndarray], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file via a temp file + rename (never half-written; perank_jax.core.atomic)."""
    from safetensors.numpy import save_file
    from perank_jax.core.atomic import atomic_path
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)


def read_npz(src, what: str, fix: str, keep: Callable[[str], bool] = lambda k: True, kinds: str = "fiu",
             error: type[Exception] = WeightError) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive (those whose name `keep` accepts), read safely: numbers
    (dtype kinds `kinds`) only, never unpickled. A damaged archive, an object (pickled) array, a
    lone .npy or a non-zip file is one `error` naming the file, saying it is not a valid `what`,
    and ending with `fix` (what to do instead)."""
    src = Path(src)
    bad = f"{src}: not a valid {what} ({{}}); {fix}"
    if src.suffix == ".npy":
        raise error(bad.format("a .npy file holds one unnamed array, not named arrays"))
    try:
        with open(src, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise error(f"{src}: cannot read {what} ({e.strerror or e})") from None
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise error(bad.format("not a zip archive, as np.savez writes"))
    try:
        with np.load(src, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if keep(k)}
    except ValueError as e:
        why = "holds pickled object arrays, which are never loaded" if "allow_pickle" in str(e) else str(e)
        raise error(bad.format(why)) from None
    except Exception as e:  # a damaged archive: BadZipFile, zlib.error, CRC / EOF / struct errors, ...
        raise error(bad.format(f"{type(e).__name__}: {e}".replace("\n", " "))) from None
    for k, v in arrays.items():
        if v.dtype.kind not in kinds:
            raise error(bad.format(f"array {k!r} has dtype {v.dtype}"))
    return arrays
