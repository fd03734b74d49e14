"""What an evidence bundle claims, parsed strictly into typed values before anything is checked.

Every field is read with its type and a path (``tests[0].openings[3].label``),
so a malformed bundle (``"models": [1]``, a string where a number belongs,
nesting where none belongs) is refused with the place it went wrong, never
with a traceback. Nothing here is trusted yet: :mod:`verifier.evidence.checks`
decides what the claims are worth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.canonical import b64d
from core.commitment import ProbeOpening
from core.derive import Derivation
from core.errors import InputError
from core.nulls import Null, null_from_dict
from verifier.stats import Mode

__all__ = ["BundleClaims", "ModelClaim", "QueryRecord", "TestClaim", "parse_claims"]

_MAX_TESTS = 10_000


class _MalformedError(InputError):
    """A field of the bundle has the wrong type or value; the message names its path."""


def _obj(v: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise _MalformedError(f"{path} is not a JSON object")
    return v


def _list(v: Any, path: str) -> list[Any]:
    if not isinstance(v, list):
        raise _MalformedError(f"{path} is not a list")
    return v


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise _MalformedError(f"{path} is not a string")
    return v


def _int(v: Any, path: str, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise _MalformedError(f"{path} is not an integer >= {low}")
    return v


def _num(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise _MalformedError(f"{path} is not a finite number")
    return float(v)


def _b64(v: Any, path: str) -> bytes:
    try:
        return b64d(_str(v, path), what=path)
    except InputError as exc:
        raise _MalformedError(str(exc)) from exc


def _mode(v: Any) -> Mode:
    if v == "sequential" or v == "fixed":
        return v
    raise _MalformedError("transcript.header.mode is neither sequential nor fixed")


def _field(d: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise _MalformedError(f"{path} has no {key!r}")
    return d[key]


def _array(d: Any, path: str) -> np.ndarray:
    o = _obj(d, path)
    shape = tuple(_int(s, f"{path}.shape[{i}]") for i, s in
                  enumerate(_list(_field(o, "shape", path), f"{path}.shape")))
    raw = _b64(_field(o, "input", path), f"{path}.input")
    if len(raw) != 4 * int(np.prod(shape, dtype=np.int64)):
        raise _MalformedError(f"{path}: the input has {len(raw)} bytes, not those of shape {list(shape)}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


@dataclass(frozen=True)
class QueryRecord:
    """One answered request of the transcript: ``(source, index, input SHA-256)`` items and labels."""

    batch: int
    items: tuple[tuple[int, int, str], ...]
    labels: tuple[int, ...]
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class TestClaim:
    """One committed probe set as the bundle describes it, with its openings and proofs."""

    __test__ = False  # not a pytest class, despite its name

    model: str
    probeset_id: int
    kind: str
    scheme: str
    size: int
    num_classes: int
    input_shape: tuple[int, ...]
    null: Null
    null_dict: Mapping[str, Any]
    root: bytes
    derivation: Derivation | None
    derivation_key: bytes | None
    openings: tuple[ProbeOpening, ...]
    registry: Mapping[str, Any]
    time: Mapping[str, Any] | None


@dataclass(frozen=True)
class ModelClaim:
    """A registered model the bundle names, with its registry proof."""

    name: str
    registry: Mapping[str, Any]


@dataclass(frozen=True)
class BundleClaims:
    """The whole payload, typed."""

    owner_name: str
    owner_key_id: str
    owner_public_key: bytes
    suspect_url: str
    suspect: Mapping[str, Any]
    header: Mapping[str, Any]
    header_sources: tuple[Mapping[str, Any], ...]
    alpha: float
    mode: Mode
    models_named: tuple[str, ...]
    records: tuple[QueryRecord, ...]
    decoys: Mapping[int, np.ndarray]
    tests: tuple[TestClaim, ...]
    models: tuple[ModelClaim, ...]
    statistics: Mapping[str, Any]
    verdict: str
    p_value: float
    model: str | None


def _test(d: Any, path: str) -> TestClaim:
    t = _obj(d, path)
    null_dict = _obj(_field(t, "null", path), f"{path}.null")
    try:
        null = null_from_dict(dict(null_dict))
        derivation_raw = _field(t, "derivation", path)
        derivation = None if derivation_raw is None else Derivation.from_dict(derivation_raw)
    except InputError as exc:
        raise _MalformedError(f"{path}: {exc}") from exc
    key_raw = _field(t, "derivation_key", path)
    openings = []
    for j, o in enumerate(_list(_field(t, "openings", path), f"{path}.openings")):
        try:
            openings.append(ProbeOpening.from_dict(o))
        except InputError as exc:
            raise _MalformedError(f"{path}.openings[{j}]: {exc}") from exc
    time = _field(t, "time", path)
    shape = _list(_field(t, "input_shape", path), f"{path}.input_shape")
    return TestClaim(
        model=_str(_field(t, "model", path), f"{path}.model"),
        probeset_id=_int(_field(t, "probeset_id", path), f"{path}.probeset_id"),
        kind=_str(_field(t, "kind", path), f"{path}.kind"),
        scheme=_str(_field(t, "scheme", path), f"{path}.scheme"),
        size=_int(_field(t, "size", path), f"{path}.size", 1),
        num_classes=_int(_field(t, "num_classes", path), f"{path}.num_classes", 2),
        input_shape=tuple(_int(s, f"{path}.input_shape[{i}]", 1) for i, s in enumerate(shape)),
        null=null,
        null_dict=null_dict,
        root=_b64(_field(t, "root", path), f"{path}.root"),
        derivation=derivation,
        derivation_key=None if key_raw is None else _b64(key_raw, f"{path}.derivation_key"),
        openings=tuple(openings),
        registry=_obj(_field(t, "registry", path), f"{path}.registry"),
        time=None if time is None else _obj(time, f"{path}.time"),
    )


def _record(d: Any, path: str) -> QueryRecord:
    r = _obj(d, path)
    if r.get("type") != "query":
        raise _MalformedError(f"{path} is not a query record")
    items = []
    for j, it in enumerate(_list(_field(r, "items", path), f"{path}.items")):
        p = f"{path}.items[{j}]"
        triple = _list(it, p)
        if len(triple) != 3:
            raise _MalformedError(f"{p} is not [source, index, digest]")
        src, idx, digest = triple
        items.append((_int(src, f"{p}[0]", -1), _int(idx, f"{p}[1]"), _str(digest, f"{p}[2]")))
    labels = tuple(_int(v, f"{path}.labels[{j}]", 0)
                   for j, v in enumerate(_list(_field(r, "labels", path), f"{path}.labels")))
    if len(labels) != len(items):
        raise _MalformedError(f"{path}: {len(labels)} labels for {len(items)} inputs")
    if "seconds" in r:  # second choices, where a dark-knowledge set was asked (core.nulls.answer_rank)
        seconds = [_int(v, f"{path}.seconds[{j}]", 0)
                   for j, v in enumerate(_list(r["seconds"], f"{path}.seconds"))]
        if len(seconds) != len(items):
            raise _MalformedError(f"{path}: {len(seconds)} second choices for {len(items)} inputs")
    return QueryRecord(batch=_int(_field(r, "batch", path), f"{path}.batch"),
                       items=tuple(items), labels=labels, raw=r)


def parse_claims(payload: Any) -> BundleClaims:
    """Parse an evidence payload strictly.

    Raises:
        InputError: naming the first field that is missing or of the wrong type.
    """
    p = _obj(payload, "payload")
    owner = _obj(_field(p, "owner", "payload"), "owner")
    suspect = _obj(_field(p, "suspect", "payload"), "suspect")
    transcript = _obj(_field(p, "transcript", "payload"), "transcript")
    header = _obj(_field(transcript, "header", "transcript"), "transcript.header")
    tests_raw = _list(_field(p, "tests", "payload"), "tests")
    if len(tests_raw) > _MAX_TESTS:
        raise _MalformedError(f"the bundle lists {len(tests_raw)} tests, more than {_MAX_TESTS}")
    models = []
    for i, m in enumerate(_list(_field(p, "models", "payload"), "models")):
        mo = _obj(m, f"models[{i}]")
        models.append(ModelClaim(name=_str(_field(mo, "name", f"models[{i}]"), f"models[{i}].name"),
                                 registry=_obj(_field(mo, "registry", f"models[{i}]"),
                                               f"models[{i}].registry")))
    decoys: dict[int, np.ndarray] = {}
    for i, d in enumerate(_list(_field(p, "decoys", "payload"), "decoys")):
        index = _int(_field(_obj(d, f"decoys[{i}]"), "index", f"decoys[{i}]"), f"decoys[{i}].index")
        if index in decoys:
            raise _MalformedError(f"decoys[{i}]: decoy {index} is listed twice")
        decoys[index] = _array(d, f"decoys[{i}]")
    model = _field(p, "model", "payload")
    return BundleClaims(
        owner_name=_str(_field(owner, "name", "owner"), "owner.name"),
        owner_key_id=_str(_field(owner, "key_id", "owner"), "owner.key_id"),
        owner_public_key=_b64(_field(owner, "public_key", "owner"), "owner.public_key"),
        suspect_url=_str(_field(suspect, "url", "suspect"), "suspect.url"),
        suspect=suspect,
        header=header,
        header_sources=tuple(_obj(s, f"transcript.header.sources[{i}]") for i, s in enumerate(
            _list(_field(header, "sources", "transcript.header"), "transcript.header.sources"))),
        alpha=_num(_field(header, "alpha", "transcript.header"), "transcript.header.alpha"),
        mode=_mode(_field(header, "mode", "transcript.header")),
        models_named=tuple(_str(m, f"transcript.header.models[{i}]") for i, m in enumerate(
            _list(_field(header, "models", "transcript.header"), "transcript.header.models"))),
        records=tuple(_record(r, f"transcript.records[{i}]") for i, r in enumerate(
            _list(_field(transcript, "records", "transcript"), "transcript.records"))),
        decoys=decoys,
        tests=tuple(_test(t, f"tests[{i}]") for i, t in enumerate(tests_raw)),
        models=tuple(models),
        statistics=_obj(_field(p, "statistics", "payload"), "statistics"),
        verdict=_str(_field(p, "verdict", "payload"), "verdict"),
        p_value=_num(_field(p, "p_value", "payload"), "p_value"),
        model=None if model is None else _str(model, "model"),
    )
