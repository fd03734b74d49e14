"""Numbers on the wire: strict reading of JSON tensors, and answers reduced to labels.

What every protocol codec shares: the Open Inference Protocol's datatype names
(KServe "Open Inference Protocol", section "Tensor Data Types"), a strict
reader that turns parsed JSON into a rectangular array of finite numbers (no
booleans, strings, ``null``, ragged rows, runaway nesting or numbers beyond
float64), and :func:`interpret_outputs`, which validates a model's answers for
``n`` inputs (labels ``[N]``/``[N, 1]``, probabilities or logits ``[N, C]``)
and reduces them to labels. An :class:`AnswerColumn` names one place in an
answer document that holds such answers, so that the guard can rewrite them
where they are (:mod:`guard.protocols`).

The reader raises whatever :class:`core.errors.WmError` class its caller
names: :class:`core.errors.SuspectError` for a suspect's answers,
:class:`verifier.wire.incoming.RequestError` for a request to a server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from core.errors import SuspectError, WmError
from core.nulls import ranked

__all__ = [
    "ANSWER_FIELDS",
    "FLOAT_TYPES",
    "INT_TYPES",
    "MAX_DEPTH",
    "AnswerColumn",
    "DecodedAnswer",
    "OutputKind",
    "as_written",
    "interpret_outputs",
    "numbers",
    "only_ints",
    "read_column",
    "read_listed",
    "read_records",
]

OutputKind = Literal["labels", "probabilities", "logits"]
INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
MAX_DEPTH = 8
"""Deepest nesting of lists accepted in a tensor (``[N, C, H, W]`` needs 4)."""


class _ShapeError(Exception):
    """Nested lists that are ragged or nested too deeply (the message completes "VALUE ...")."""


def _leaf_types(values: list[Any]) -> set[type]:
    """The types of the leaves of nested lists ``values``, level by level (C-speed ``map``)."""
    level: list[list[Any]] = [values]
    for _ in range(MAX_DEPTH):
        types: set[type] = set()
        for v in level:
            types.update(map(type, v))
        if list not in types:
            return types
        if types != {list}:
            raise _ShapeError("is not a rectangular array of numbers")
        level = [e for v in level for e in v]
    raise _ShapeError("is nested too deeply")


def numbers(values: Any, what: str, *, error: type[WmError] = SuspectError) -> np.ndarray:
    """Parsed JSON ``values`` as a float64 array, refusing anything that is not numbers.

    Args:
        values: a JSON number, or nested lists of them.
        what: names the value in errors.
        error: the error class to raise.

    Returns:
        The array (its shape is the nesting of ``values``); finite float64.

    Raises:
        error: a boolean, string, ``null`` or object among the numbers; ragged
            rows; nesting deeper than :data:`MAX_DEPTH`; NaN, infinity, or a
            number too large for float64 (``1e400``, ``10**400``).
    """
    if isinstance(values, list):
        try:
            types = _leaf_types(values)
        except _ShapeError as exc:
            raise error(f"{what} {exc}") from None
    else:
        types = {type(values)}
    odd = types - {int, float}
    if odd:
        name = min(t.__name__ for t in odd)
        raise error(f"{what} holds a {name}, not a number")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except OverflowError as exc:
        raise error(f"{what} holds a number too large for float64") from exc
    except ValueError as exc:
        raise error(f"{what} is not a rectangular array of numbers") from exc
    if not np.isfinite(arr).all():
        raise error(f"{what} contains NaN or infinity")
    return arr


def interpret_outputs(
    values: Any, *, n: int, num_classes: int, datatype: str | None = None, what: str = "answer"
) -> tuple[np.ndarray, OutputKind]:
    """Validate a model's answers for ``n`` inputs and reduce them to labels.

    Args:
        values: nested lists (or an array) of numbers.
        n: how many inputs were sent.
        num_classes: the task's class count ``C``.
        datatype: the declared OIP datatype, when there is one.
        what: names the answer in errors.

    Returns:
        int64 labels ``[n]`` and whether the answers were labels, probabilities or logits.

    Raises:
        SuspectError: wrong shape or class count, NaN/infinity, non-numbers, labels
            out of range, or non-integral labels.
    """
    if datatype is not None and datatype not in INT_TYPES | FLOAT_TYPES:
        raise SuspectError(f"{what} has datatype {datatype!r}; expected an integer or float type")
    arr = values.astype(np.float64) if isinstance(values, np.ndarray) else numbers(values, what)
    if not np.isfinite(arr).all():
        raise SuspectError(f"{what} contains NaN or infinity")
    if arr.ndim == 2 and arr.shape == (n, 1):
        arr = arr[:, 0]
    if arr.ndim == 1:
        if arr.shape[0] != n:
            raise SuspectError(f"{what} has {arr.shape[0]} labels for {n} inputs")
        if not np.array_equal(arr, np.round(arr)):
            raise SuspectError(f"{what} looks like labels but holds non-integers")
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise SuspectError(f"{what} has a label outside 0..{num_classes - 1}")
        return arr.astype(np.int64), "labels"
    if arr.ndim == 2:
        if arr.shape[0] != n:
            raise SuspectError(f"{what} has {arr.shape[0]} rows for {n} inputs")
        if arr.shape[1] != num_classes:
            raise SuspectError(
                f"{what} has {arr.shape[1]} scores per input; the model has {num_classes} classes"
            )
        probs = bool((arr >= 0).all() and (arr <= 1).all() and np.allclose(arr.sum(1), 1, atol=1e-3))
        return arr.argmax(axis=1).astype(np.int64), "probabilities" if probs else "logits"
    raise SuspectError(
        f"{what} has shape {list(arr.shape)}; expected [{n}], [{n}, 1] or [{n}, {num_classes}]"
    )


@dataclass(frozen=True, eq=False)
class AnswerColumn:
    """One place in a parsed answer document that holds answers for every input.

    Attributes:
        values: the answers as read, float64 ``[n]``, ``[n, 1]`` or ``[n, C]``.
        kind: labels, probabilities or logits.
        integral: whether the document holds them as integers (written back so).
        put: writes replacement values (same shape as :attr:`values`) into the
            document, or ``None`` for a form that cannot be rewritten (a top-k map).
    """

    values: np.ndarray
    kind: OutputKind
    integral: bool
    put: Callable[[np.ndarray], None] | None

    def replace(self, values: np.ndarray) -> None:
        """Write ``values`` into the document in this column's own form (integers stay integers).

        Raises:
            ValueError: another shape than :attr:`values`, or a column that cannot be rewritten.
        """
        if values.shape != self.values.shape:
            raise ValueError(f"replacement shape {values.shape} is not {self.values.shape}")
        if self.put is None:
            raise ValueError("this answer's form cannot be rewritten")
        self.put(values)


@dataclass(frozen=True, eq=False)
class DecodedAnswer:
    """A model's answer document for ``n`` inputs, read.

    Attributes:
        box: a one-element list holding the parsed JSON document (columns write
            into it, and may replace it whole when the answer is a bare number or list).
        labels: int64 labels ``[n]`` from the primary column.
        kind: the primary column's kind.
        columns: every place that holds answers, the primary first.
    """

    box: list[Any]
    labels: np.ndarray
    kind: OutputKind
    columns: tuple[AnswerColumn, ...]
    ranked_second: np.ndarray | None = None
    """Second choices a form states outright (a top-k map), where the columns hold labels only."""

    @property
    def doc(self) -> Any:
        """The (possibly rewritten) answer document."""
        return self.box[0]

    @property
    def seconds(self) -> np.ndarray | None:
        """Each input's second choice (:func:`core.nulls.ranked`) where the primary column holds
        scores; ``None`` for labels, which do not say what a model ranks second."""
        if self.ranked_second is not None:
            return self.ranked_second
        values = self.columns[0].values if self.columns else None
        if self.kind == "labels" or values is None or values.ndim != 2 or values.shape[1] < 2:
            return None
        return ranked(values, 2)

    @property
    def writable(self) -> bool:
        """Whether every column can be rewritten."""
        return all(c.put is not None for c in self.columns)


def as_written(values: np.ndarray, integral: bool) -> Any:
    """``values`` as JSON-ready nested lists: integers where the document had integers."""
    out: Any = values.astype(np.int64).tolist() if integral else values.astype(np.float64).tolist()
    return out


def only_ints(values: Any) -> bool:
    """Whether parsed JSON ``values`` (a number or nested lists) holds integers only."""
    if not isinstance(values, list):
        return type(values) is int
    try:
        return _leaf_types(values) == {int}
    except _ShapeError:
        return False


_SCORE_FIELDS = ("probabilities", "scores", "logits", "probs")
_LABEL_FIELDS = ("label", "labels", "class", "classes", "class_id", "class_ids", "predicted_class")
ANSWER_FIELDS = frozenset(_SCORE_FIELDS + _LABEL_FIELDS)
"""The named outputs :func:`read_records` knows as answers."""


def read_column(values: Any, n: int, num_classes: int, what: str,
                write: Callable[[Any], None] | None) -> tuple[AnswerColumn, np.ndarray]:
    """Parsed JSON ``values`` read as answers for ``n`` inputs: a column, and its labels.

    Args:
        values: the answers as the document holds them.
        n: how many inputs were sent.
        num_classes: the task's class count.
        what: names the answers in errors.
        write: puts JSON-ready replacement values back where ``values`` came
            from; ``None`` for a form that cannot be rewritten.

    Raises:
        SuspectError: as :func:`interpret_outputs`.
    """
    labels, kind = interpret_outputs(values, n=n, num_classes=num_classes, what=what)
    integral = kind == "labels" and only_ints(values)

    def put(new: np.ndarray) -> None:
        assert write is not None
        write(as_written(new, integral))

    return AnswerColumn(numbers(values, what), kind, integral, None if write is None else put), labels


def read_listed(box: list[Any], values: Any, n: int, num_classes: int, what: str,
                write: Callable[[Any], None]) -> DecodedAnswer:
    """An answer document (in ``box``) whose answers ``values`` are numbers, or one record per input.

    Records (objects of named outputs) are read by :func:`read_records`;
    anything else by :func:`read_column`, written back through ``write``.

    Raises:
        SuspectError: the values are not answers for ``n`` inputs.
    """
    if isinstance(values, list) and values and all(isinstance(p, dict) for p in values):
        columns, labels, kind = read_records(values, n, num_classes, what)
        return DecodedAnswer(box, labels, kind, columns)
    column, labels = read_column(values, n, num_classes, what, write)
    return DecodedAnswer(box, labels, column.kind, (column,))


def read_records(records: list[dict[str, Any]], n: int, num_classes: int, what: str
                 ) -> tuple[tuple[AnswerColumn, ...], np.ndarray, OutputKind]:
    """Answers given as one object of named fields per input (TF Serving's named outputs,
    TorchServe handlers): ``[{"probabilities": [...], "class": 3}, ...]``.

    Every known field present in all records that reads as answers is a
    column (scores first, then labels; a one-element list such as
    ``class_ids: [3]`` counts as its element); the first is the primary.

    Returns:
        The columns, and the primary's labels and kind.

    Raises:
        SuspectError: another count of records than ``n``, or no field that reads as answers.
    """
    if len(records) != n:
        raise SuspectError(f"{what} has {len(records)} records for {n} inputs")
    columns: list[AnswerColumn] = []
    primary: np.ndarray | None = None
    failure: SuspectError | None = None
    for name in _SCORE_FIELDS + _LABEL_FIELDS:
        if not all(name in r for r in records):
            continue
        raw = [r[name] for r in records]
        wrapped = name in _LABEL_FIELDS and all(isinstance(v, list) and len(v) == 1 for v in raw)

        def write(new: list[Any], name: str = name, wrapped: bool = wrapped) -> None:
            for r, v in zip(records, new, strict=True):
                r[name] = [v] if wrapped else v

        try:
            column, labels = read_column([v[0] for v in raw] if wrapped else raw, n, num_classes,
                                         f"{what} {name!r}", write)
        except SuspectError as exc:
            failure = failure or exc
            continue
        columns.append(column)
        primary = labels if primary is None else primary
    if primary is None:
        if failure is not None:
            raise failure
        fields = sorted({k for r in records for k in r})[:5]
        raise SuspectError(f"{what} has none of the known fields (it has {fields})")
    return tuple(columns), primary, columns[0].kind
