"""The bounded GGUF header check: every count, length and tensor extent in a GGUF file is checked
against the file's size (and against GGUF_LIMITS) BEFORE the `gguf` library's reader allocates
anything for it, so a 68-byte file whose array claims 2^62 elements is one WeightError, read in
microseconds, never an unbounded allocation."""
from __future__ import annotations

import math
import mmap
import os
import struct
from pathlib import Path

from perank_jax.weights.io import WeightError

# THE limits of a GGUF header beyond "fits in the file" (real Llama files: ~250 keys, a 49k-256k vocab
# plus as many merges, 2 + 9 * layers tensors, no array inside an array deeper than one level).
GGUF_LIMITS = {
    "keys": 65_536,                  # metadata key/value pairs
    "tensors": 65_536,
    "array_items": 1 << 22,          # string / nested array items over the whole header (each costs
                                     # the gguf reader ~1 KB of Python objects)
    "array_depth": 2,                # an array of arrays at most
    "dims": 4,                       # GGML_MAX_DIMS
    "alignment": 1 << 16,
}
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}   # GGUFValueType
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_VERSIONS = (2, 3)


class _Header:
    """A cursor over the mapped file that refuses to read past its end."""

    def __init__(self, path: Path, buf):
        self.path, self.buf, self.pos, self.items = path, buf, 0, 0

    def fail(self, what: str):
        raise WeightError(f"{self.path}: not a readable GGUF file ({what}, at byte {self.pos} of {len(self.buf)})")

    def need(self, n: int, what: str):
        if n > len(self.buf) - self.pos:
            self.fail(f"{what} needs {n} bytes, only {len(self.buf) - self.pos} left")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v[0] if len(v) == 1 else v

    def string(self, what: str) -> bytes:
        n = self.unpack("<Q", what)
        self.need(n, f"{what} (string of {n} bytes)")
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s

    def value(self, vtype: int, what: str, depth: int = 0):
        """Skip one value of `vtype`; returns it for a uint32 (general.alignment), else None."""
        if vtype in _SCALAR_SIZE:
            if vtype == _UINT32:
                return self.unpack("<I", what)
            self.need(_SCALAR_SIZE[vtype], what)
            self.pos += _SCALAR_SIZE[vtype]
        elif vtype == _STRING:
            self.string(what)
        elif vtype == _ARRAY:
            if depth >= GGUF_LIMITS["array_depth"]:
                self.fail(f"{what}: arrays nested deeper than {GGUF_LIMITS['array_depth']}")
            etype, count = self.unpack("<IQ", f"{what} (array header)")
            if etype in _SCALAR_SIZE:
                self.need(count * _SCALAR_SIZE[etype], f"{what} (array of {count} numbers)")
                self.pos += count * _SCALAR_SIZE[etype]
                return None
            if etype not in (_STRING, _ARRAY):
                self.fail(f"{what}: unknown array element type {etype}")
            self.need(count * 8, f"{what} (array of {count} items)")    # each item is at least 8 bytes
            self.items += count
            if self.items > GGUF_LIMITS["array_items"]:
                self.fail(f"{what}: more than {GGUF_LIMITS['array_items']} array items in the header")
            for _ in range(count):
                self.value(etype, what, depth + 1)
        else:
            self.fail(f"{what}: unknown value type {vtype}")
        return None


def check_gguf_header(path: str | os.PathLike) -> None:
    """One WeightError naming the file unless its header is a little-endian GGUF v2/v3 whose every
    key, value, array, tensor description and tensor extent lies inside the file and GGUF_LIMITS."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < 24:
                raise WeightError(f"{path}: not a readable GGUF file (only {os.fstat(f.fileno()).st_size} bytes)")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise WeightError(f"{path}: cannot read ({e.strerror or e})") from None
    view = memoryview(buf)
    try:
        h = _Header(path, view)
        if h.unpack("<4s", "magic") != b"GGUF":
            h.fail("no GGUF magic")
        version = h.unpack("<I", "version")
        if version not in _VERSIONS:
            h.fail(f"version {version} (supported: little-endian {_VERSIONS})")
        n_tensors, n_keys = h.unpack("<QQ", "counts")
        for what, n in (("keys", n_keys), ("tensors", n_tensors)):
            if n > GGUF_LIMITS[what]:
                h.fail(f"{n} {what} (limit {GGUF_LIMITS[what]})")
        alignment = 32
        for _ in range(n_keys):
            key = h.string("metadata key").decode("utf-8", "replace")
            vtype = h.unpack("<I", f"type of {key!r}")
            v = h.value(vtype, f"value of {key!r}")
            if key == "general.alignment":
                if vtype != _UINT32 or not (0 < v <= GGUF_LIMITS["alignment"]) or v & (v - 1):
                    h.fail(f"general.alignment {v!r} is not a power of two up to {GGUF_LIMITS['alignment']}")
                alignment = v
        extents = []
        for _ in range(n_tensors):
            name = h.string("tensor name").decode("utf-8", "replace")
            n_dims = h.unpack("<I", f"dimensions of tensor {name!r}")
            if n_dims > GGUF_LIMITS["dims"]:
                h.fail(f"tensor {name!r} has {n_dims} dimensions (limit {GGUF_LIMITS['dims']})")
            dims = [h.unpack("<Q", f"shape of tensor {name!r}") for _ in range(n_dims)]
            ttype, offset = h.unpack("<IQ", f"type and offset of tensor {name!r}")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                h.fail(f"tensor {name!r} has unknown type {ttype}")
            if dims and dims[0] % block:
                h.fail(f"tensor {name!r}: first dimension {dims[0]} is not a multiple of its block size {block}")
            extents.append((name, offset, math.prod(dims) // block * type_size))
        data_start = -(-h.pos // alignment) * alignment
        for name, offset, nbytes in extents:
            if data_start + offset + nbytes > len(buf):
                raise WeightError(f"{path}: tensor {name!r} ({nbytes} bytes at offset {offset}) extends past "
                                  f"the end of the file ({len(buf)} bytes; truncated?)")
    finally:
        view.release()
        buf.close()
