"""The inference protocols as the guard sees them: find the inputs in a request, rewrite an answer.

The guard speaks what :mod:`verifier.protocols` speaks, from the server side:

- ``oip``: Open Inference Protocol / KServe V2, ``POST /v2/models/{name}[/versions/{v}]/infer``
  with one input tensor ``{"name", "shape", "datatype", "data"}``; every output
  tensor that holds labels ``[N]``/``[N, 1]`` or scores ``[N, C]`` is rewritten;
- ``tfserving``: KServe V1 / TensorFlow Serving, ``POST /v1/models/{name}:predict``
  with ``{"instances": [...]}``, answer ``{"predictions": [...]}``;
- ``torchserve``: ``POST /predictions/{name}`` with one input, answer a label or
  a score vector.

Answers are validated with :func:`verifier.protocols.interpret_outputs` (the
verifier's own reading of labels, probabilities and logits). ``None`` from
these functions means the guard does not understand a request or an answer:
the proxy (:mod:`guard.proxy`) then refuses an inference request it cannot
read, and an answer it cannot mark when a row must be marked, rather than let
either through unmarked.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from core.errors import SuspectError
from verifier.protocols import OutputKind, interpret_outputs

__all__ = ["Answer", "Route", "encode_marked", "parse_answer", "parse_inputs", "route_of"]

Protocol = Literal["oip", "tfserving", "torchserve"]
_OIP = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_V1 = re.compile(r"^/v1/models/([^/:]+)(?:/versions/[^/:]+)?:predict$")
_TS = re.compile(r"^/predictions/([^/]+)(?:/[^/]+)?$")
_INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})


@dataclass(frozen=True)
class Route:
    """An inference call the guard understands: the protocol and the model named in the path."""

    protocol: Protocol
    model: str


def route_of(method: str, path: str) -> Route | None:
    """The inference route of a request, or ``None`` (then it is passed through as is)."""
    if method != "POST":
        return None
    for protocol, pattern in (("oip", _OIP), ("tfserving", _V1), ("torchserve", _TS)):
        m = pattern.match(path)
        if m:
            return Route(protocol, m.group(1))  # type: ignore[arg-type]
    return None


def _loads(data: bytes) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(data, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _floats(values: Any, shape: list[int]) -> np.ndarray | None:
    """``values`` (flat or nested numbers) as float32 of ``shape``; ``None`` if they are not."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        return None
    if arr.dtype.kind not in "iuf" or arr.size != math.prod(shape):
        return None
    out = arr.astype(np.float32).reshape(shape)
    return out if np.isfinite(out).all() else None


def parse_inputs(route: Route, body: bytes, input_shape: tuple[int, ...]) -> np.ndarray | None:
    """The float32 inputs ``[N, *input_shape]`` of an inference request, or ``None``.

    ``None`` means the guard does not understand the request (malformed,
    another input shape, binary tensor data, ...); it is then forwarded
    unchanged and whatever the upstream answers goes back unchanged.
    """
    doc = _loads(body)
    if route.protocol == "oip":
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
            return None
        if len(doc["inputs"]) != 1 or not isinstance(doc["inputs"][0], dict):
            return None
        t = doc["inputs"][0]
        shape = t.get("shape")
        if t.get("datatype") not in ("FP32", "FP64") or "data" not in t:
            return None
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            return None
        if tuple(shape[1:]) != tuple(input_shape) or not shape or shape[0] < 1:
            return None
        return _floats(t["data"], shape)
    if route.protocol == "tfserving":
        if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
            return None
        n = len(doc["instances"])
        return _floats(doc["instances"], [n, *input_shape]) if n else None
    item = doc.get("data", doc.get("body")) if isinstance(doc, dict) else doc
    return _floats(item, [1, *input_shape]) if item is not None else None


@dataclass
class Answer:
    """An upstream answer the guard understands.

    Attributes:
        doc: the parsed JSON answer (rewritten in place by :func:`encode_marked`).
        labels: the upstream's labels ``[N]``.
        kind: labels, probabilities or logits.
        slots: for OIP, the indices of the output tensors that hold the answers.
    """

    doc: Any
    labels: np.ndarray
    kind: OutputKind
    slots: tuple[int, ...] = ()


def parse_answer(route: Route, body: bytes, n: int, num_classes: int) -> Answer | None:
    """The upstream's answer for ``n`` inputs, or ``None`` if it is not one the guard can mark."""
    doc = _loads(body)
    try:
        if route.protocol == "oip":
            if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
                return None
            slots, found = [], None
            for i, t in enumerate(doc["outputs"]):
                if not isinstance(t, dict) or not isinstance(t.get("shape"), list):
                    continue
                if t.get("datatype") not in _INT_TYPES | _FLOAT_TYPES or "data" not in t:
                    continue
                try:
                    values = np.asarray(t["data"], dtype=np.float64).reshape(t["shape"])
                except (ValueError, TypeError):
                    continue
                try:
                    labels, kind = interpret_outputs(values, n=n, num_classes=num_classes)
                except SuspectError:
                    continue
                slots.append(i)
                found = found or (labels, kind)
            if found is None:
                return None
            return Answer(doc, found[0], found[1], tuple(slots))
        if route.protocol == "tfserving":
            if not isinstance(doc, dict) or "predictions" not in doc:
                return None
            labels, kind = interpret_outputs(doc["predictions"], n=n, num_classes=num_classes)
            return Answer(doc, labels, kind)
        labels, kind = interpret_outputs([doc], n=1, num_classes=num_classes)
        return Answer(doc, labels, kind)
    except SuspectError:
        return None


def _mark_scores(row: np.ndarray, label: int, kind: OutputKind) -> np.ndarray:
    """Scores whose argmax is ``label``: the top score and ``label``'s swap places.

    A swap keeps the answer a permutation of the honest one (probabilities
    still sum to 1, the confidence profile is unchanged); ties are broken
    toward ``label`` by a tiny shift of mass (probabilities) or value (logits).
    """
    out = row.astype(np.float64).copy()
    top = int(np.argmax(out))
    out[top], out[label] = out[label], out[top]
    others = np.delete(np.arange(out.size), label)
    if out.size > 1 and out[others].max() >= out[label]:
        if kind == "probabilities":
            eps = max(1e-6, float(out[label]) * 1e-6)
            tied = others[out[others] >= out[label]]
            take = np.minimum(out[tied], eps)
            out[tied] -= take
            out[label] += take.sum()
        else:
            out[label] = np.nextafter(np.float32(out[others].max()), np.float32(np.inf))
    return out


def _mark_rows(values: np.ndarray, marks: dict[int, int], kind: OutputKind) -> np.ndarray:
    out = values.astype(np.float64).copy()
    for i, label in marks.items():
        if out.ndim == 1:
            out[i] = label
        elif out.shape[1] == 1:
            out[i, 0] = label
        else:
            out[i] = _mark_scores(out[i], label, kind)
    return out


def _like(values: np.ndarray, integral: bool) -> Any:
    return values.astype(np.int64).tolist() if integral else values.tolist()


def encode_marked(route: Route, answer: Answer, marks: dict[int, int], num_classes: int) -> bytes:
    """The answer with rows ``marks`` (row index -> label) marked, as JSON bytes."""
    doc = answer.doc
    if route.protocol == "oip":
        for i in answer.slots:
            t = doc["outputs"][i]
            values = np.asarray(t["data"], dtype=np.float64).reshape(t["shape"])
            marked = _mark_rows(values, marks, answer.kind)
            flat = marked.reshape(-1)
            t["data"] = _like(flat, t["datatype"] in _INT_TYPES)
        return json.dumps(doc, separators=(",", ":")).encode()
    if route.protocol == "tfserving":
        values = np.asarray(doc["predictions"], dtype=np.float64)
        integral = answer.kind == "labels" and _all_ints(doc["predictions"])
        doc["predictions"] = _like(_mark_rows(values, marks, answer.kind), integral)
        return json.dumps(doc, separators=(",", ":")).encode()
    values = np.asarray([doc], dtype=np.float64)
    integral = answer.kind == "labels" and _all_ints(doc)
    marked = _mark_rows(values, marks, answer.kind)[0]
    return json.dumps(_like(marked, integral), separators=(",", ":")).encode()


def _all_ints(v: Any) -> bool:
    if isinstance(v, list):
        return all(_all_ints(e) for e in v)
    return isinstance(v, int) and not isinstance(v, bool)
