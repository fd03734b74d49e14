"""Keyed derivation of probes, torch-free: key streams, key-random labels, data-free inputs.

Every probe set with key-random labels is derived from a 32-byte per-set
**derivation key**. The registry signs and logs a commitment to that key
(:func:`key_commitment`, inside :meth:`core.probeset.ProbeSet.summary` as the
``derivation`` descriptor); the key itself stays sealed with the probes. When
the owner opens it (``wm verify --open-keys``, which burns the set), anyone
re-derives every opened probe with :func:`expected_label` and
:func:`expected_input` and so learns that the labels were drawn by the key,
not chosen to fit a suspect (DESIGN.md, "Trust": nulls nobody chooses).

Streams are HMAC-SHA256 in counter mode over an HKDF-extracted key (RFC 5869
section 2.2 extract, then HMAC blocks keyed by purpose and counter), so the
same key gives the same bytes on any machine. Probe ``i`` draws its label
and its input from streams of their own (purpose ``label`` or ``input``,
context ``i``): labels are independent of inputs, and a checker derives one
opened probe without deriving the rest.

Only exact arithmetic turns bytes into numbers (no ``log``/``cos``, whose
last bit differs between CPUs): uniform floats are 24-bit integers divided by
``2**24`` and mapped to ``[low, high)`` in float64 before one rounding to
float32; integers below ``high`` use rejection sampling.

Rules (the descriptor names them, with a version):

- labels ``uniform/v1``: uniform on ``{0, ..., C-1}``, so an independent model
  matches each with probability exactly ``1/C``;
- labels ``guard-mark/v1``: the guard's keyed marking of the input's bytes under
  its epoch key at ``rate`` (:mod:`core.marking`; the key's commitment is the
  one the guard's epoch record signs): the probe must be marked, and its label
  is the marked one, uniform and independent of the input's content;
- inputs ``uniform-noise/v1``: every value uniform on ``[low, high)``;
- inputs ``abstract-blocks/v1``: a coarse ``g x g`` grid (``g`` in 2..4) of
  uniform levels per channel, nearest-upsampled (Adi et al., USENIX Security
  2018, "abstract images"); flat ``[D]`` inputs get ``g`` blocks;
- inputs ``committed``: chosen from data (or rendered) when the set was
  made; the checker cannot re-derive them, so they rest on the commitment's
  time alone.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from core import marking
from core.errors import InputError

__all__ = [
    "DERIVATION_KEY_SIZE",
    "Derivation",
    "InputRule",
    "KeyStream",
    "LabelRule",
    "derive_input",
    "derive_label",
    "derive_labels",
    "expected_input",
    "expected_label",
    "extract",
    "key_commitment",
]

DERIVATION_KEY_SIZE = 32
_EXTRACT_SALT = b"wm.derivation-key/v1"
_COMMIT_PREFIX = b"wm.derivation-key-commitment/v1\x00"

LabelRule = Literal["uniform/v1", "guard-mark/v1"]
InputRule = Literal["uniform-noise/v1", "abstract-blocks/v1", "committed"]
DATA_FREE: frozenset[str] = frozenset({"uniform-noise/v1", "abstract-blocks/v1"})


class KeyStream:
    """An endless deterministic byte stream: ``HMAC(prk, label || 0x00 || counter)``."""

    def __init__(self, prk: bytes, label: bytes) -> None:
        self._prk = prk
        self._label = label + b"\x00"
        self._counter = 0
        self._buffer = b""

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        chunks = [self._buffer]
        have = len(self._buffer)
        while have < n:
            block = hmac.new(
                self._prk, self._label + struct.pack(">Q", self._counter), hashlib.sha256
            ).digest()
            self._counter += 1
            chunks.append(block)
            have += len(block)
        data = b"".join(chunks)
        self._buffer = data[n:]
        return data[:n]

    def uint32(self, n: int) -> np.ndarray:
        """``n`` uniform 32-bit unsigned integers."""
        return np.frombuffer(self.read(4 * n), dtype=">u4").astype(np.uint64)

    def uniform(self, n: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        """``n`` float32 values uniform on ``[low, high)`` (a 24-bit grid, one rounding)."""
        u = (self.uint32(n) >> np.uint64(8)).astype(np.float64) / float(1 << 24)
        x = (low + (high - low) * u).astype(np.float32)
        # rounding to float32 may reach ``high`` itself; keep the interval half-open
        return np.minimum(x, np.nextafter(np.float32(high), np.float32(-np.inf)))

    def integers(self, n: int, high: int) -> np.ndarray:
        """``n`` int64 values uniform on ``{0, ..., high - 1}`` (rejection sampling, unbiased)."""
        if high < 1:
            raise ValueError("high must be at least 1")
        limit = (1 << 32) - ((1 << 32) % high)
        out: list[int] = []
        while len(out) < n:
            for v in self.uint32(n - len(out)):
                if int(v) < limit:
                    out.append(int(v) % high)
        return np.asarray(out, dtype=np.int64)

    def permutation(self, n: int) -> np.ndarray:
        """A uniformly random permutation of ``range(n)`` (Fisher-Yates)."""
        perm = np.arange(n, dtype=np.int64)
        for i in range(n - 1, 0, -1):
            j = int(self.integers(1, i + 1)[0])
            perm[i], perm[j] = perm[j], perm[i]
        return perm


def extract(secret: bytes, salt: bytes, purpose: str, *context: str) -> KeyStream:
    """The stream for ``purpose`` (and context strings) of ``secret``, HKDF-extracted with ``salt``."""
    prk = hmac.new(salt, secret, hashlib.sha256).digest()
    return KeyStream(prk, "\x00".join((purpose, *context)).encode())


def key_commitment(key: bytes) -> str:
    """The public commitment to a derivation key: hex SHA-256 with a domain prefix."""
    return hashlib.sha256(_COMMIT_PREFIX + key).hexdigest()


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != DERIVATION_KEY_SIZE:
        raise InputError(f"a derivation key is {DERIVATION_KEY_SIZE} bytes")


def derive_label(key: bytes, index: int, num_classes: int) -> int:
    """The key-random label of probe ``index``: uniform on ``{0, ..., num_classes - 1}``."""
    _check_key(key)
    return int(extract(key, _EXTRACT_SALT, "label", str(index)).integers(1, num_classes)[0])


def derive_labels(key: bytes, n: int, num_classes: int) -> np.ndarray:
    """The labels of probes ``0 .. n-1`` (int64), as :func:`derive_label` gives each."""
    return np.asarray([derive_label(key, i, num_classes) for i in range(n)], dtype=np.int64)


def _abstract_blocks(stream: KeyStream, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    g = 2 + int(stream.integers(1, 3)[0])
    if len(shape) == 1:
        (d,) = shape
        return stream.uniform(g, low, high)[(np.arange(d) * g) // d]
    if len(shape) == 3:
        c, h, w = shape
        grid = stream.uniform(c * g * g, low, high).reshape(c, g, g)
        return grid[:, (np.arange(h) * g) // h][:, :, (np.arange(w) * g) // w]
    raise InputError(f"abstract triggers need [C, H, W] or [D] inputs, got {list(shape)}")


def derive_input(
    key: bytes, index: int, rule: InputRule, shape: tuple[int, ...], low: float, high: float
) -> np.ndarray:
    """The data-free input of probe ``index`` under ``rule``: float32 of ``shape`` in ``[low, high)``.

    Raises:
        InputError: a rule that is not data-free, a bad range, or a shape the rule cannot fill.
    """
    _check_key(key)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InputError(f"an input range needs finite low < high, got [{low}, {high})")
    stream = extract(key, _EXTRACT_SALT, "input", str(index))
    match rule:
        case "uniform-noise/v1":
            x = stream.uniform(int(np.prod(shape, dtype=np.int64)), low, high).reshape(shape)
        case "abstract-blocks/v1":
            x = _abstract_blocks(stream, shape, low, high)
        case _:
            raise InputError(f"input rule {rule!r} is not data-free; nothing to derive")
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass(frozen=True)
class Derivation:
    """How a probe set follows from its derivation key: the public descriptor the registry signs.

    Attributes:
        key_sha256: :func:`key_commitment` of the sealed derivation key.
        labels: the label rule.
        inputs: the input rule (``committed`` when inputs came from data).
        low: lower end of the input range of data-free rules.
        high: upper end (exclusive) of that range.
        rate: the marking rate of ``guard-mark/v1`` labels (None for other rules).
    """

    key_sha256: str
    labels: LabelRule = "uniform/v1"
    inputs: InputRule = "committed"
    low: float = 0.0
    high: float = 1.0
    rate: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.key_sha256, str) and len(self.key_sha256) == 64
                and all(c in "0123456789abcdef" for c in self.key_sha256)):
            raise InputError("a derivation's key commitment is 64 lower-case hex digits")
        if self.labels not in get_args(LabelRule):
            raise InputError(f"unknown label rule {self.labels!r}")
        if self.inputs not in get_args(InputRule):
            raise InputError(f"unknown input rule {self.inputs!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise InputError(f"a derivation's input range needs finite low < high, "
                             f"got [{self.low}, {self.high})")
        guard = self.labels == "guard-mark/v1"
        if guard != (self.rate is not None) or (guard and not 0.0 < (self.rate or 0.0) <= 1.0):
            raise InputError("a guard-mark derivation, and only it, has a marking rate in (0, 1]")
        if guard and self.inputs != "committed":
            raise InputError("guard probes are the queries clients sent: their inputs are committed")

    @property
    def data_free(self) -> bool:
        """Whether the inputs follow from the key (so a checker re-derives them too)."""
        return self.inputs in DATA_FREE

    def opens_with(self, key: bytes) -> bool:
        """Whether ``key`` is the committed derivation key (a guard epoch key for guard marks)."""
        if not isinstance(key, bytes) or len(key) != DERIVATION_KEY_SIZE:
            return False
        commit = marking.key_commitment(key) if self.labels == "guard-mark/v1" else key_commitment(key)
        return hmac.compare_digest(commit, self.key_sha256)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as signed in the probe-set record."""
        return {"key_sha256": self.key_sha256, "labels": self.labels, "inputs": self.inputs,
                "low": self.low, "high": self.high, "rate": self.rate}

    @classmethod
    def from_dict(cls, d: Any) -> Derivation:
        """Parse :meth:`to_dict`'s form; :class:`InputError` if malformed."""
        if not isinstance(d, dict) or set(d) != {"key_sha256", "labels", "inputs", "low", "high", "rate"}:
            raise InputError("a derivation descriptor has key_sha256, labels, inputs, low, high and rate")
        low, high, rate = d["low"], d["high"], d["rate"]
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in (low, high)) or (
                rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float))):
            raise InputError("a derivation's input range and rate are numbers")
        return cls(key_sha256=d["key_sha256"], labels=d["labels"], inputs=d["inputs"],
                   low=float(low), high=float(high), rate=None if rate is None else float(rate))


def expected_label(
    derivation: Derivation, key: bytes, index: int, num_classes: int, x: np.ndarray
) -> int:
    """The label probe ``index`` (input ``x``) must carry under ``derivation`` and its opened ``key``.

    Raises:
        InputError: a guard probe that its epoch key does not mark.
    """
    match derivation.labels:
        case "uniform/v1":
            return derive_label(key, index, num_classes)
        case "guard-mark/v1":
            assert derivation.rate is not None
            marker = marking.MarkingFunction(key, derivation.rate, num_classes)
            mark = marker.decide(marking.canonical_bytes(x))
            if not mark.marked:
                raise InputError("its epoch key does not mark this input")
            return mark.label
    raise InputError(f"unknown label rule {derivation.labels!r}")


def expected_input(
    derivation: Derivation, key: bytes, index: int, shape: tuple[int, ...]
) -> np.ndarray | None:
    """The input probe ``index`` must be under a data-free rule; None when inputs were committed."""
    if not derivation.data_free:
        return None
    return derive_input(key, index, derivation.inputs, shape, derivation.low, derivation.high)
