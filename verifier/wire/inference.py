"""An incoming inference request, as every server in wm reads it.

The types the protocol codecs return from their request parsers, and the
check they share: the inputs of a request are finite float32 numbers, a
batch of 1 to ``max_batch`` rows, each row of the model's size. A request
may lay a row out differently from the model (``[N, 64]`` for a ``[1, 8, 8]``
model, as a server that declares its own layout would be sent); the row's
values in C order are the input either way, so :attr:`InferenceRequest.inputs`
is always ``[N, *input_shape]`` and :attr:`InferenceRequest.layout` keeps the
layout that was sent, for a server that insists on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from core.errors import InputError
from verifier.wire.tensors import numbers

__all__ = [
    "MAX_BATCH",
    "InferenceRequest",
    "RequestError",
    "Route",
    "ServedProtocol",
    "batch_of",
    "layout_mismatch",
    "shape_of",
]

ServedProtocol = Literal["oip", "tfserving", "torchserve"]
MAX_BATCH = 4096


class RequestError(InputError):
    """A request a server refuses, with the HTTP status to answer it with (400 unless said).

    Args:
        message: one line saying what is wrong with the request.
        status: 400 (malformed), 404 (no such model), 408 (body too slow), 413 (too large),
            500 (the server failed to parse it), 503 (the server is busy; retry).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[RequestError], tuple[str, int]]:
        # Parsed in a worker process, raised in the server: keep the status across pickling.
        return (RequestError, (str(self), self.status))


@dataclass(frozen=True)
class Route:
    """An inference call: the protocol, the model named in the path, and its version if named."""

    protocol: ServedProtocol
    model: str
    version: str | None = None


@dataclass(frozen=True, eq=False)
class InferenceRequest:
    """An inference request, parsed and checked.

    Attributes:
        route: where it was sent.
        inputs: float32 ``[N, *input_shape]``, finite.
        layout: the dimensions of one input as the request laid them out.
        input_name: the input tensor's name (Open Inference Protocol), else ``None``.
        outputs: the output names the request asks for (OIP), else ``None``.
        request_id: the request's ``id`` (OIP), echoed in the answer.
    """

    route: Route
    inputs: np.ndarray
    layout: tuple[int, ...]
    input_name: str | None = None
    outputs: tuple[str, ...] | None = None
    request_id: str | None = None


def batch_of(values: Any, shape: list[int] | None, input_shape: tuple[int, ...], *, what: str,
             max_batch: int = MAX_BATCH) -> tuple[np.ndarray, tuple[int, ...]]:
    """A request's inputs as float32 ``[N, *input_shape]``, and the layout they were sent in.

    Args:
        values: the numbers as parsed (flat, or nested rows).
        shape: the declared shape ``[N, ...]`` (OIP), or ``None`` to take it from the nesting.
        input_shape: one input's shape as the model takes it.
        what: names the values in errors.
        max_batch: most inputs in one request.

    Raises:
        RequestError: non-numbers, NaN or infinity, ragged rows, a count that
            does not fill the shape, a batch outside 1..``max_batch``, or rows
            of another size than the model's.
    """
    arr = numbers(values, what, error=RequestError)
    if shape is not None:
        if arr.size != math.prod(shape):
            raise RequestError(f"{what} holds {arr.size} values but shape {shape} needs {math.prod(shape)}")
        if arr.ndim != 1 and list(arr.shape) != shape:
            raise RequestError(f"{what} is nested as {list(arr.shape)}, not as its shape {shape}")
        arr = arr.reshape(shape)
    if arr.ndim < 1 or not 1 <= arr.shape[0] <= max_batch:
        raise RequestError(f"batch size must be between 1 and {max_batch}")
    layout = tuple(int(d) for d in arr.shape[1:])
    if math.prod(layout) != math.prod(input_shape):
        raise layout_mismatch(list(arr.shape), input_shape)
    with np.errstate(over="ignore"):
        x = arr.astype(np.float32)
    if not np.isfinite(x).all():
        raise RequestError(f"{what} holds a number too large for float32")
    return x.reshape(arr.shape[0], *input_shape), layout


def layout_mismatch(shape: list[int], input_shape: tuple[int, ...]) -> RequestError:
    """The error for inputs of ``shape`` sent to a model that takes ``[-1, *input_shape]``."""
    want = ", ".join(map(str, input_shape))
    return RequestError(f"input shape {shape} does not match [-1, {want}]")


def shape_of(value: Any, what: str) -> list[int]:
    """A declared tensor shape: a non-empty list of non-negative integers (``true`` is not one)."""
    if not isinstance(value, list) or not value or not all(
        type(s) is int and s >= 0 for s in value
    ):
        raise RequestError(f"{what} must be a list of non-negative integers")
    return [int(s) for s in value]
