"""The Open Inference Protocol (KServe V2) REST wire format, both ends.

KServe "Open Inference Protocol", REST: ``POST /v2/models/{name}[/versions/{v}]/infer``
with ``{"inputs": [{"name", "shape", "datatype", "data"}], "outputs"?, "id"?}``,
answered ``{"model_name", "model_version"?, "id"?, "outputs": [{"name", "shape",
"datatype", "data"}]}``; model metadata at ``GET /v2/models/{name}[/versions/{v}]``
(``{"name", "versions", "platform", "inputs", "outputs"}``); errors as
``{"error": "..."}``. Triton, MLServer, KServe and TorchServe's v2 speak it.

Here: the suspect client (:class:`OipClient`), the request parser that
``wm serve`` and the guard share (:func:`parse_request`), the answer reader
that the client and the guard share (:func:`read_answer`), and the answer and
metadata documents ``wm serve`` writes. Servers as deployed declare less than
the protocol allows: MLServer with a custom runtime lists no ``inputs`` or
``outputs`` at all, others use ``-1`` for free dimensions or their own layout
of the same size (``[-1, 784]`` for 1x28x28 images). The client then sends
the default input name ``input-0`` (or ``--input-name``), the layout the
server declares when it has the probes' size, and the probes' own shape
otherwise.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from core.errors import InputError, SuspectError
from verifier.wire.client import Detection, SuspectClient
from verifier.wire.inference import (
    MAX_BATCH,
    InferenceRequest,
    RequestError,
    Route,
    batch_of,
    shape_of,
)
from verifier.wire.tensors import (
    FLOAT_TYPES,
    INT_TYPES,
    AnswerColumn,
    DecodedAnswer,
    as_written,
    interpret_outputs,
    numbers,
)

__all__ = [
    "DEFAULT_INPUT",
    "PATH",
    "URL",
    "OipClient",
    "answer_doc",
    "metadata_doc",
    "parse_request",
    "read_answer",
    "wire_layout",
]

URL = re.compile(
    r"^(?P<base>https?://[^/]+(?:/.*?)?)/v2/models/(?P<name>[^/]+)"
    r"(?:/versions/(?P<version>[^/]+))?(?:/infer)?/?$"
)
"""A suspect's OIP URL: the model's base URL, or its ``/infer`` endpoint."""
PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
"""The path of an OIP inference request, as a server routes it."""
DEFAULT_INPUT = "input-0"


def _fit(dims: list[int], probe_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """``dims`` (``-1`` free) as a layout of ``probe_shape``'s size, or ``None`` if it cannot be."""
    size = math.prod(probe_shape)
    if not dims:
        return None
    free = [i for i, d in enumerate(dims) if d == -1]
    known = math.prod(d for d in dims if d != -1)
    if len(dims) == len(probe_shape) and all(d in (-1, p) for d, p in zip(dims, probe_shape, strict=True)):
        return probe_shape
    if not free:
        return tuple(dims) if known == size else None
    if len(free) == 1 and known > 0 and size % known == 0:
        out = list(dims)
        out[free[0]] = size // known
        return tuple(out)
    return None


def wire_layout(declared: Any, probe_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The layout of one input to send, from the shape a server declares for its input.

    A declared shape usually leads with the batch dimension (``[-1, 1, 8, 8]``),
    may leave it out (``[1, 8, 8]``), may mark free dimensions ``-1`` and may
    lay the input out otherwise (``[-1, 64]``). The first reading that holds
    exactly the probes' values wins; a shape that says nothing usable (absent,
    not a list of integers) leaves the probes' own shape.

    Raises:
        SuspectError: the declared shape cannot hold an input of the probes' size.
    """
    if not isinstance(declared, list) or not declared or not all(
        type(d) is int and d >= -1 for d in declared
    ):
        return probe_shape
    if declared[0] == -1:
        readings = [declared[1:]]  # a free leading dimension is the batch
    elif len(declared) == len(probe_shape):
        readings = [declared, declared[1:]]
    else:
        readings = [declared[1:], declared]
    for dims in readings:
        fit = _fit(dims, probe_shape)
        if fit is not None:
            return fit
    raise SuspectError(f"suspect model takes inputs {declared}; the probes are {list(probe_shape)}")


class OipClient(SuspectClient):
    """Open Inference Protocol / KServe V2 REST.

    Args:
        url: the model's URL (``http://HOST/v2/models/NAME[/versions/V][/infer]``).
        input_name: the input tensor's name to send (default: the one the
            metadata declares, else ``input-0``).
        **kwargs: see :class:`SuspectClient`.
    """

    protocol = "oip"
    url_form = URL
    url_example = "an Open Inference Protocol URL looks like http://HOST/v2/models/NAME[/infer]"

    def __init__(self, url: str, *, input_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        if input_name is not None and not input_name.strip():
            raise InputError("--input-name must not be empty")
        self.model_name = str(self.parts["name"])
        version = f"/versions/{self.parts['version']}" if self.parts["version"] else ""
        self.model_url = f"{self.parts['base']}/v2/models/{self.model_name}{version}"
        self.forced_input = input_name
        self.input_name = input_name or DEFAULT_INPUT
        self.datatype = "FP32"
        self.output_name: str | None = None
        self.wire_shape: tuple[int, ...] = self.input_shape

    def describe(self) -> Detection:
        status, meta = self.http.get_json(self.model_url, "model metadata")
        if status != 200 or not isinstance(meta, dict):
            raise SuspectError(
                f"no Open Inference Protocol model at {self.model_url} (HTTP {status}: {meta})"
            )
        inputs = meta.get("inputs")
        declared = [t for t in inputs if isinstance(t, dict)] if isinstance(inputs, list) else []
        chosen = next((t for t in declared if t.get("name") == self.forced_input), None)
        if chosen is None and self.forced_input is None and declared:
            chosen = declared[0]
        if chosen is None:
            said = "declares no inputs" if not declared else f"has no input {self.forced_input!r}"
            what = f"model {said}: sending {self.input_name!r}"
        else:
            if isinstance(chosen.get("name"), str) and chosen["name"]:
                self.input_name = chosen["name"]
            datatype = chosen.get("datatype")
            if isinstance(datatype, str) and datatype not in FLOAT_TYPES:
                raise SuspectError(
                    f"suspect model's input {self.input_name!r} takes {datatype}; the probes are floats"
                )
            self.datatype = datatype if isinstance(datatype, str) else "FP32"
            self.wire_shape = wire_layout(chosen.get("shape"), self.input_shape)
            what = f"input {self.input_name!r} {chosen.get('datatype')} {chosen.get('shape')}"
        outputs = meta.get("outputs")
        out_desc = ""
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            o = outputs[0]
            self.output_name = o["name"] if isinstance(o.get("name"), str) and o["name"] else None
            out_desc = f", output {o.get('name')!r} {o.get('datatype')} {o.get('shape')}"
        return Detection(
            "oip",
            f"{self.model_url}/infer",
            f"Open Inference Protocol V2 model {meta.get('name', self.model_name)!r} "
            f"(platform {meta.get('platform') or '?'}), {what} "
            f"as {self.datatype} [N, {', '.join(map(str, self.wire_shape))}]{out_desc}",
        )

    def request_body(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        n = int(x.shape[0])
        doc: dict[str, Any] = {
            "inputs": [
                {
                    "name": self.input_name,
                    "shape": [n, *self.wire_shape],
                    "datatype": self.datatype,
                    # float32 -> float64 is exact; JSON's shortest repr of that double reads back to it.
                    "data": x.reshape(-1).astype(np.float64).tolist(),
                }
            ]
        }
        if self.output_name is not None:
            doc["outputs"] = [{"name": self.output_name}]
        return f"{self.model_url}/infer", doc

    def parse_answer(self, doc: Any, n: int) -> DecodedAnswer:
        return read_answer(doc, n, self.num_classes, output_name=self.output_name)


# ---------------------------------------------------------------- answers (client and guard)


def _tensor(t: Any) -> tuple[np.ndarray, str]:
    """An output tensor's values in its own shape, and its datatype."""
    if not isinstance(t, dict):
        raise SuspectError("suspect's output is not a JSON object")
    shape, datatype, data = t.get("shape"), t.get("datatype"), t.get("data")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise SuspectError("suspect's output has no valid 'shape'")
    if not isinstance(datatype, str):
        raise SuspectError("suspect's output has no 'datatype'")
    if not isinstance(data, list):
        raise SuspectError("suspect's output has no 'data' list")
    if datatype not in INT_TYPES | FLOAT_TYPES:
        raise SuspectError(f"suspect's output has datatype {datatype!r}; expected an integer or float type")
    arr = numbers(data, "suspect's output data").reshape(-1)
    if arr.size != math.prod(shape):
        raise SuspectError(
            f"suspect's output holds {arr.size} values but its shape {shape} needs {math.prod(shape)}"
        )
    return arr.reshape(shape), datatype


def _column(t: Any, n: int, num_classes: int) -> tuple[AnswerColumn, np.ndarray]:
    """An output tensor as a column of answers, and its labels."""
    values, datatype = _tensor(t)
    labels, kind = interpret_outputs(values, n=n, num_classes=num_classes, datatype=datatype,
                                     what="suspect's output")
    integral = datatype in INT_TYPES

    def put(new: np.ndarray) -> None:
        t["data"] = as_written(new.reshape(-1), integral)

    return AnswerColumn(values=values, kind=kind, integral=integral, put=put), labels


def read_answer(doc: Any, n: int, num_classes: int, *, output_name: str | None = None) -> DecodedAnswer:
    """An OIP answer for ``n`` inputs: labels from the named (else first) output.

    Every other output tensor that also reads as answers for the ``n`` inputs
    (a model that returns labels and probabilities) is a column too, so that
    a rewrite reaches all of them.

    Raises:
        SuspectError: no ``outputs``, or the chosen output is not answers for ``n`` inputs.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list) or not doc["outputs"]:
        raise SuspectError("suspect's answer has no 'outputs' list")
    outs: list[Any] = doc["outputs"]
    first = next((i for i, o in enumerate(outs) if isinstance(o, dict) and o.get("name") == output_name), 0)
    primary, labels = _column(outs[first], n, num_classes)
    columns = [primary]
    for i, o in enumerate(outs):
        if i != first and isinstance(o, dict):
            try:
                columns.append(_column(o, n, num_classes)[0])
            except SuspectError:
                continue  # another kind of output (class names, embeddings): not an answer
    return DecodedAnswer([doc], labels, primary.kind, tuple(columns))


# ---------------------------------------------------------------- the server side


def parse_request(doc: Any, route: Route, input_shape: tuple[int, ...], *,
                  max_batch: int = MAX_BATCH) -> InferenceRequest:
    """An OIP inference request with exactly one floating-point input tensor, in JSON.

    Raises:
        RequestError: anything else (see :func:`verifier.wire.inference.batch_of`
            for the checks on the numbers).
    """
    if not isinstance(doc, dict):
        raise RequestError("inference request must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError("inference request needs 'inputs' with exactly one input tensor")
    tensor: dict[str, Any] = inputs[0]
    for key in ("name", "shape", "datatype", "data"):
        if key not in tensor:
            raise RequestError(f"input tensor lacks {key!r}")
    if not isinstance(tensor["name"], str):
        raise RequestError("input tensor's 'name' must be a string")
    if tensor["datatype"] not in FLOAT_TYPES:
        raise RequestError(f"input datatype {tensor['datatype']!r} is not supported; use FP32")
    shape = shape_of(tensor["shape"], "input 'shape'")
    for params in (tensor.get("parameters"), doc.get("parameters")):
        if isinstance(params, dict) and "binary_data_size" in params:
            raise RequestError("binary tensor data is not supported; send JSON 'data'")
    wanted = doc.get("outputs")
    names: tuple[str, ...] | None = None
    if wanted is not None:
        if not isinstance(wanted, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
        ):
            raise RequestError("'outputs' must be a list of objects with a 'name'")
        names = tuple(o["name"] for o in wanted)
    x, layout = batch_of(tensor["data"], shape, input_shape, what="input 'data'", max_batch=max_batch)
    request_id = doc.get("id") if isinstance(doc.get("id"), str) else None
    return InferenceRequest(route=route, inputs=x, layout=layout, input_name=tensor["name"],
                            outputs=names, request_id=request_id)


def answer_doc(model: str, version: str, result: np.ndarray, *, output: str = "output-0",
               request_id: str | None = None) -> dict[str, Any]:
    """The answer document for ``result`` (int64 labels ``[N]`` or float32 scores ``[N, C]``)."""
    doc: dict[str, Any] = {
        "model_name": model,
        "model_version": version,
        "outputs": [
            {
                "name": output,
                "shape": list(result.shape),
                "datatype": "INT64" if result.dtype == np.int64 else "FP32",
                "data": result.reshape(-1).tolist(),
            }
        ],
    }
    if request_id is not None:
        doc["id"] = request_id
    return doc


def metadata_doc(model: str, version: str, platform: str, input_shape: tuple[int, ...],
                 num_classes: int, labels: bool) -> dict[str, Any]:
    """The model metadata document of a one-input, one-output classifier."""
    out_shape, out_type = ([-1], "INT64") if labels else ([-1, num_classes], "FP32")
    return {
        "name": model,
        "versions": [version],
        "platform": platform,
        "inputs": [{"name": DEFAULT_INPUT, "datatype": "FP32", "shape": [-1, *input_shape]}],
        "outputs": [{"name": "output-0", "datatype": out_type, "shape": out_shape}],
    }
