"""The IDX file format of the MNIST family, read strictly and checked against a pinned digest.

IDX (LeCun, Cortes, Burges, "The MNIST database of handwritten digits",
section "File formats") is a 4-byte magic number — two zero bytes, a type
code (``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16, ``0x0C``
int32, ``0x0D`` float32, ``0x0E`` float64) and the number of dimensions — then
one big-endian uint32 per dimension, then the values, big-endian, in C order.

:func:`read_idx` accepts the file gzip-compressed (``NAME.gz``, as
distributed) or plain (``NAME``), decompresses at most the pinned size (so a
corrupt or hostile archive cannot exhaust memory), checks the SHA-256 of the
decompressed bytes (distributors recompress, so the archive's own digest
differs between copies of the same data), and only then parses.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np

from core.errors import DataError

__all__ = ["find_idx", "parse_idx", "read_idx"]

_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def parse_idx(data: bytes, *, source: str) -> np.ndarray:
    """Parse IDX bytes into an array of the declared type and shape.

    Raises:
        DataError: naming ``source``, if the magic number, the dimensions or
            the length do not agree.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{source} is not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _TYPES:
        raise DataError(f"{source}: unknown IDX element type 0x{code:02x}")
    if ndim < 1:
        raise DataError(f"{source}: an IDX file needs at least one dimension")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_TYPES[code])
    count = 1
    for d in dims:
        count *= d
    if len(data) - header != count * dtype.itemsize:
        raise DataError(
            f"{source}: IDX dimensions {list(dims)} need {count * dtype.itemsize} bytes of data, "
            f"the file has {len(data) - header}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def find_idx(directory: Path, name: str) -> Path | None:
    """``directory/NAME.gz`` or ``directory/NAME``, whichever exists first, else ``None``."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, *, size: int, sha256: str) -> np.ndarray:
    """Read an IDX file (gzip or plain) whose decompressed bytes must hash to ``sha256``.

    Args:
        path: the file; a ``.gz`` suffix means gzip-compressed.
        size: the expected decompressed size in bytes.
        sha256: the expected SHA-256 of the decompressed bytes, hex.

    Raises:
        DataError: if the file cannot be read or decompressed, or its content
            is not the pinned one.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read(size + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(size + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} cannot be read ({exc.__class__.__name__}: {exc})") from exc
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{path} is not the expected file (its SHA-256 differs)",
                        hint="reinstall the data set")
    return parse_idx(data, source=str(path))
