"""The verification transcript: JSON Lines written as queries are answered, MAC-chained.

One ``header`` line (suspect, probe sets, decoys, plan), then one ``query``
line per answered request (items ``[source, index, input SHA-256]``, request
and answer SHA-256, status, attempts, latency, time, labels) or an ``error``
line, and an ``end`` line. Decoys are items of source :data:`DECOY`.

Each line carries ``mac``: hex HMAC-SHA256, under a key derived from the
owner key, of the previous line's MAC followed by the RFC 8785 canonical JSON
of the line without its ``mac`` (the first line chains from 32 zero bytes).
A line edited, inserted, removed or reordered breaks the chain from there
on, and ``wm verify --resume`` refuses it naming the line
(:func:`read_transcript` with ``mac_key``). Whoever holds the owner key can
still write a chain; what the suspect really answered is checked by
``wm evidence replay``.

Torch-free: the offline evidence checker recomputes statistics from a
bundle's records with :func:`tests_from_records`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.canonical import canonical_json
from core.errors import InputError
from core.nulls import answer_rank, null_from_dict
from verifier.stats import TestInput

__all__ = [
    "DECOY",
    "MAC_INFO",
    "TRANSCRIPT_TYPE",
    "ChainedLines",
    "Transcript",
    "input_digest",
    "public_header",
    "read_transcript",
    "tests_from_records",
]

TRANSCRIPT_TYPE = "wm.transcript/v1"
DECOY = -1
MAC_INFO = b"wm.transcript-mac/v1"
_CHAIN_START = bytes(32)


def input_digest(x: Any) -> str:
    """SHA-256 (hex) of one input's float32 little-endian bytes, C order (array or tensor)."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype="<f4").tobytes()).hexdigest()


def _line_mac(key: bytes, previous: bytes, doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "mac"}
    return hmac.new(key, previous + canonical_json(body), hashlib.sha256).digest()


class ChainedLines:
    """Appends MAC-chained JSON lines to a transcript, each flushed and fsynced.

    Args:
        path: the transcript file.
        key: the MAC key (from the owner key, :data:`MAC_INFO`).
        previous: the MAC of the last line already in the file (for a resumed run).
    """

    def __init__(self, path: Path, key: bytes, previous: bytes = _CHAIN_START) -> None:
        self.path = path
        self._key = key
        self._previous = previous

    def write(self, doc: dict[str, Any]) -> None:
        """Append ``doc`` with its ``mac``."""
        mac = _line_mac(self._key, self._previous, doc)
        line = json.dumps({**doc, "mac": mac.hex()}, separators=(",", ":"), allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._previous = mac


@dataclass(frozen=True)
class Transcript:
    """A transcript read back: its header, the lines after it, and the last line's MAC."""

    header: dict[str, Any]
    records: list[dict[str, Any]]
    last_mac: bytes


def read_transcript(path: str | Path, *, mac_key: bytes | None = None) -> Transcript:
    """Read a transcript back; a torn last line is dropped.

    Args:
        path: the transcript.
        mac_key: when given, every line's MAC must chain (see the module docstring).

    Raises:
        InputError: unreadable, no header, a damaged line before the last, or
            (with ``mac_key``) a line whose MAC does not chain, naming it.
    """
    p = Path(path)
    try:
        lines = p.read_bytes().split(b"\n")
    except OSError as exc:
        raise InputError(f"cannot read transcript {p}: {exc.strerror}") from exc
    if lines and lines[-1] == b"":
        lines.pop()
    docs: list[dict[str, Any]] = []
    previous = _CHAIN_START
    for i, line in enumerate(lines):
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError) as exc:
            if i == len(lines) - 1:
                break  # torn by a crash mid-write: that query gets sent again
            raise InputError(f"transcript {p}: line {i + 1} is damaged") from exc
        if mac_key is not None:
            mac = doc.get("mac")
            want = _line_mac(mac_key, previous, doc)
            if not isinstance(mac, str) or not hmac.compare_digest(mac, want.hex()):
                raise InputError(
                    f"transcript {p}: line {i + 1} fails its MAC chain "
                    "(edited, inserted, removed or reordered, or written under another owner key)"
                )
            previous = want
        docs.append(doc)
    if not docs or docs[0].get("type") != TRANSCRIPT_TYPE:
        raise InputError(f"{p} is not a wm transcript")
    return Transcript(header=docs[0], records=docs[1:], last_mac=previous)


def public_header(header: dict[str, Any]) -> dict[str, Any]:
    """The header without its plan (which names probes that were never sent) and MAC."""
    return {k: v for k, v in header.items() if k not in ("plan", "mac")}


def tests_from_records(
    sources: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    labels_of: Callable[[int, int], int],
) -> list[TestInput]:
    """Match bits per source, in plan order, from transcript ``query`` records.

    A probe of a dark-knowledge set (:func:`core.nulls.answer_rank` 2, from the
    source's ``scheme``) matches when the suspect's *second* choice is its
    label; where the answer was labels only there is none, and it is a miss.

    Args:
        sources: the header's public source descriptions (``scheme`` decides each one's rank).
        records: transcript lines (only ``query`` ones are used, in order).
        labels_of: the committed label of probe ``(source, index)``.

    Raises:
        InputError: a source's ``unspent`` count (the futility rule's population) is malformed.
    """
    bits: list[list[bool]] = [[] for _ in sources]
    positions: list[list[int]] = [[] for _ in sources]
    indices: list[list[int]] = [[] for _ in sources]
    ranks = [answer_rank(str(s.get("scheme", ""))) for s in sources]
    t = 0
    for rec in records:
        if rec.get("type") != "query":
            continue
        seconds = rec.get("seconds")
        if seconds is not None and len(seconds) != len(rec["items"]):
            raise InputError(f"a query record holds {len(seconds)} second choices "
                             f"for {len(rec['items'])} items")
        for j, ((src, idx, _digest), label) in enumerate(zip(rec["items"], rec["labels"], strict=True)):
            if src == DECOY:
                continue
            t += 1
            if ranks[src] == 1:
                bits[src].append(int(label) == labels_of(src, idx))
            else:  # a second-choice probe: a label-only answer does not say it, so it is a miss
                bits[src].append(seconds is not None and seconds[j] is not None
                                 and int(seconds[j]) == labels_of(src, idx))
            positions[src].append(t)
            indices[src].append(int(idx))
    return [
        TestInput(
            model=str(s["model"]),
            kind=str(s["kind"]),
            null=null_from_dict(s["null"]),
            bits=tuple(b),
            positions=tuple(p),
            population=_population(s.get("unspent")),
            indices=tuple(ix),
        )
        for s, b, p, ix in zip(sources, bits, positions, indices, strict=True)
    ]


def _population(value: Any) -> int | None:
    """A source's ``unspent`` count, checked (``None`` when absent: no futility rule)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"a source's unspent count must be a non-negative integer, got {value!r}")
    return value
