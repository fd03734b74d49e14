"""The one reader of incoming inference requests (``wm serve`` and the guard) and of answers."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import SuspectError
from verifier.wire.incoming import BodyLimits, RequestReader, parse_request, read_answer, route_of
from verifier.wire.inference import RequestError, Route

SHAPE = (1, 2, 2)
OIP = Route("oip", "m")
V1 = Route("tfserving", "m")
TS = Route("torchserve", "m")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v2/models/m/infer", Route("oip", "m")),
        ("POST", "/v2/models/m/versions/1/infer", Route("oip", "m", "1")),
        ("POST", "/v1/models/m:predict", Route("tfserving", "m")),
        ("POST", "/v1/models/m/versions/2:predict", Route("tfserving", "m", "2")),
        ("POST", "/predictions/m", Route("torchserve", "m")),
        ("POST", "/predictions/m/3", Route("torchserve", "m", "3")),
        ("GET", "/v2/models/m/infer", None),
        ("POST", "/v2/models/m", None),
        ("POST", "/v2/models/m/infer/extra", None),
    ],
)
def test_routes(method: str, path: str, expected: Route | None) -> None:
    assert route_of(method, path) == expected


def _oip(data: object, shape: object = (1, 1, 2, 2), datatype: str = "FP32", **extra: object) -> bytes:
    tensor = {"name": "x", "shape": list(shape) if isinstance(shape, tuple) else shape,
              "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "request body is not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"inputs": []}', "exactly one input tensor"),
        (_oip([1, 2, 3, 4], datatype="INT8"), "datatype 'INT8' is not supported"),
        (_oip([1, 2, 3]), "holds 3 values but shape [1, 1, 2, 2] needs 4"),
        (_oip([0] * 9, (1, 1, 3, 3)), "input shape [1, 1, 3, 3] does not match [-1, 1, 2, 2]"),
        (_oip([1, "a", 3, 4]), "holds a str, not a number"),
        (_oip([1, None, 3, 4]), "holds a NoneType, not a number"),
        (_oip([1, True, 3, 4]), "holds a bool, not a number"),
        (b'{"inputs": [{"name": "x", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, NaN, 3, 4]}]}',
         "request body contains NaN, which is not a number"),
        (_oip([1, 2, 3, 4], [True, 1, 2, 2]), "'shape' must be a list of non-negative integers"),
        (_oip([[1, 2, 3], [4]], (2, 1, 1, 2)), "not a rectangular array of numbers"),
        (_oip([[1, 2], [3, 4]], (1, 1, 2, 2)), "is nested as [2, 2], not as its shape [1, 1, 2, 2]"),
        (b'{"inputs": [{"name": "x", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1e400, 0, 0, 0]}]}',
         "contains NaN or infinity"),
        (_oip([10**400, 0, 0, 0]), "too large for float64"),
        (_oip([1e39, 0, 0, 0]), "too large for float32"),
        (_oip([0] * 4, (0, 1, 2, 2)), "holds 4 values but shape [0, 1, 2, 2] needs 0"),
        (_oip([], (0, 1, 2, 2)), "batch size must be between 1 and 4096"),
        (_oip([1, 2, 3, 4], parameters={"binary_data_size": 16}), "binary tensor data is not supported"),
        (b"[" * 100_000 + b"]" * 100_000, "request body is nested too deeply"),
        (_oip([[[[[[[[[[1.0]]]]]]]]]], (1, 1, 1, 1, 1, 1, 1, 1, 1, 1)), "is nested too deeply"),
    ],
)
def test_requests_that_cannot_be_read_are_refused_with_one_line(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=_escape(message)) as info:
        parse_request(OIP, body, SHAPE)
    assert info.value.status == 400 and "\n" not in str(info.value)


def _escape(text: str) -> str:
    return re.escape(text)


def test_requests_of_each_protocol_parse_to_the_same_inputs() -> None:
    data = [0.5, 0.25, 1.0, 0.0]
    x = parse_request(OIP, _oip(data, datatype="FP64"), SHAPE).inputs
    assert x.dtype == np.float32 and x.shape == (1, 1, 2, 2)
    nested = parse_request(OIP, _oip([[[data[:2], data[2:]]]]), SHAPE).inputs
    v1_rows = parse_request(V1, json.dumps({"instances": [[[data[:2], data[2:]]]]}).encode(), SHAPE).inputs
    v1_named = parse_request(V1, json.dumps({"instances": [{"x": data}]}).encode(), SHAPE).inputs
    v1_columnar = parse_request(V1, json.dumps({"inputs": [data]}).encode(), SHAPE).inputs
    ts = parse_request(TS, json.dumps({"data": data}).encode(), SHAPE).inputs
    ts_bare = parse_request(TS, json.dumps(data).encode(), SHAPE).inputs
    for other in (nested, v1_rows, v1_named, v1_columnar, ts, ts_bare):
        assert np.array_equal(other, x)


def test_another_layout_of_the_same_size_is_read_and_remembered() -> None:
    req = parse_request(OIP, _oip(list(range(8)), (2, 4)), SHAPE)
    assert req.inputs.shape == (2, 1, 2, 2) and req.layout == (4,)
    assert req.inputs.reshape(-1).tolist() == list(range(8))


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        (V1, b'{"rows": []}', "needs an 'instances' list"),
        (V1, b'{"instances": []}', "'instances' is empty"),
        (V1, b'{"instances": [{"a": [1, 2, 3, 4], "b": [1]}]}', "exactly one named input"),
        (V1, b'{"instances": [[1, 2, 3]]}', "does not match"),
        (TS, b'{"other": 1}', "the input as its body, or under 'data'"),
        (TS, b'[[1, 2, 3, 4], [1, 2, 3, 4]]', "input shape [1, 2, 4] does not match [-1, 1, 2, 2]"),
    ],
)
def test_v1_and_torchserve_requests_refused(route: Route, body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=_escape(message)):
        parse_request(route, body, SHAPE)


def test_a_refusal_keeps_its_status_across_processes() -> None:
    err = pickle.loads(pickle.dumps(RequestError("too big", 413)))
    assert isinstance(err, RequestError) and err.status == 413 and str(err) == "too big"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
_tensor = st.fixed_dictionaries({
    "name": st.text(max_size=4),
    "shape": st.one_of(st.lists(st.integers(-1, 5), max_size=5), _json),
    "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BYTES"]),
    "data": st.one_of(st.lists(st.floats(allow_nan=False), max_size=8), _json),
})


@settings(max_examples=300, deadline=None)
@given(doc=st.one_of(_json, st.fixed_dictionaries({"inputs": st.lists(_tensor, max_size=2)}),
                     st.fixed_dictionaries({"instances": _json}), st.fixed_dictionaries({"data": _json})),
       protocol=st.sampled_from(["oip", "tfserving", "torchserve"]))
def test_any_body_is_read_as_finite_inputs_or_refused(doc: object, protocol: str) -> None:
    body = json.dumps(doc).encode()
    try:
        req = parse_request(Route(protocol, "m"), body, SHAPE)  # type: ignore[arg-type]
    except RequestError as exc:
        assert exc.status == 400 and str(exc)
        return
    assert req.inputs.dtype == np.float32 and req.inputs.shape[1:] == SHAPE
    assert np.isfinite(req.inputs).all()


def _oip_answer(values: np.ndarray, datatype: str) -> bytes:
    return json.dumps({"model_name": "m", "outputs": [
        {"name": "y", "shape": list(values.shape), "datatype": datatype,
         "data": values.reshape(-1).tolist()}]}).encode()


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"outputs": []}', _oip_answer(np.array([1, 2]), "INT64"),
     _oip_answer(np.array([1, 2, 11]), "INT64"), _oip_answer(np.array([1.5, 2, 3]), "FP32"),
     b'{"outputs": [{"name": "y", "shape": [3], "datatype": "BYTES", "data": ["a", "b", "c"]}]}',
     b"[" * 100_000 + b"]" * 100_000],
)
def test_answers_that_cannot_be_read_are_suspect_errors(body: bytes) -> None:
    with pytest.raises(SuspectError):
        read_answer(OIP, body, 3, 10)


def test_every_output_holding_answers_is_a_column() -> None:
    body = json.dumps({"outputs": [
        {"name": "probs", "shape": [2, 3], "datatype": "FP32", "data": [0.1, 0.8, 0.1, 0.7, 0.2, 0.1]},
        {"name": "names", "shape": [2], "datatype": "BYTES", "data": ["b", "a"]},
        {"name": "label", "shape": [2, 1], "datatype": "INT32", "data": [1, 0]},
    ]}).encode()
    answer = read_answer(OIP, body, 2, 3)
    assert answer.labels.tolist() == [1, 0] and answer.kind == "probabilities"
    assert [c.kind for c in answer.columns] == ["probabilities", "labels"] and answer.writable
    answer.columns[1].replace(np.array([[2.0], [2.0]]))
    assert answer.doc["outputs"][2]["data"] == [2, 2]  # integers stay integers


@pytest.mark.parametrize(
    ("route", "doc", "labels", "kind"),
    [
        (V1, {"predictions": [[0.1, 0.9], [0.8, 0.2]]}, [1, 0], "probabilities"),
        (V1, {"predictions": [{"probabilities": [0.1, 0.9], "classes": 1},
                              {"probabilities": [0.6, 0.4], "classes": 0}]}, [1, 0], "probabilities"),
        (V1, {"predictions": [{"class_ids": [1]}, {"class_ids": [0]}]}, [1, 0], "labels"),
        (V1, {"predictions": [{"classes": "cat"}, {"classes": "dog"}]}, None, None),
    ],
)
def test_v1_predictions_as_lists_or_named_outputs(route: Route, doc: object, labels: list[int] | None,
                                                  kind: str | None) -> None:
    body = json.dumps(doc).encode()
    if labels is None:
        with pytest.raises(SuspectError):
            read_answer(route, body, 2, 2)
        return
    answer = read_answer(route, body, 2, 2)
    assert answer.labels.tolist() == labels and answer.kind == kind


@pytest.mark.parametrize(
    ("doc", "label", "writable"),
    [
        (3, 3, True),
        ([3], 3, True),
        ([0.1, 0.0, 0.0, 0.9], 3, True),
        ([[0.1, 0.0, 0.0, 0.9]], 3, True),
        ({"probabilities": [0.0, 0.0, 1.0, 0.0]}, 2, True),
        ([{"label": 1}], 1, True),
        ({"3": 0.91, "0": 0.05}, 3, False),
        ([{"2": 0.5, "1": 0.25}], 2, False),
    ],
)
def test_torchserve_answers_as_numbers_lists_or_dicts(doc: object, label: int, writable: bool) -> None:
    answer = read_answer(TS, json.dumps(doc).encode(), 1, 4)
    assert answer.labels.tolist() == [label] and answer.writable == writable
    if writable:
        column = answer.columns[0]
        marked = column.values.copy()
        if marked.ndim == 1 or marked.shape[1] == 1:
            marked[...] = 0
        else:
            marked[0] = marked[0][::-1]
        column.replace(marked)
        again = read_answer(TS, json.dumps(answer.doc).encode(), 1, 4)
        assert again.labels.tolist() == [int(np.argmax(marked[0])) if marked.ndim == 2 and
                                         marked.shape[1] > 1 else 0]


def test_torchserve_class_names_are_refused() -> None:
    with pytest.raises(SuspectError, match="class names that are not class indices"):
        read_answer(TS, b'{"tabby": 0.9, "tiger": 0.1}', 1, 4)


_output = st.fixed_dictionaries({
    "name": st.text(max_size=3),
    "shape": st.one_of(st.lists(st.integers(-1, 4), max_size=3), _json),
    "datatype": st.sampled_from(["INT64", "FP32", "BYTES", "BOOL"]),
    "data": st.one_of(st.lists(st.one_of(st.integers(-3, 12), st.floats(allow_nan=False)), max_size=12),
                      _json),
})


@settings(max_examples=300, deadline=None)
@given(doc=st.one_of(_json, st.fixed_dictionaries({"outputs": st.lists(_output, max_size=3)}),
                     st.fixed_dictionaries({"predictions": _json})),
       protocol=st.sampled_from(["oip", "tfserving", "torchserve"]), n=st.integers(1, 3))
def test_any_answer_is_read_as_labels_in_range_or_refused(doc: object, protocol: str, n: int) -> None:
    n = 1 if protocol == "torchserve" else n
    try:
        answer = read_answer(Route(protocol, "m"), json.dumps(doc).encode(), n, 4)  # type: ignore[arg-type]
    except SuspectError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert answer.labels.shape == (n,) and ((answer.labels >= 0) & (answer.labels < 4)).all()


@pytest.fixture(scope="module")
def via_worker() -> Iterator[RequestReader]:
    """A reader that sends every body over 1 kB to its parsing worker process."""
    reader = RequestReader(BodyLimits(inline_bytes=1024))
    yield reader
    reader.close()


def _outcome(reader: RequestReader, body: bytes, shape: tuple[int, ...]) -> tuple[str, object]:
    try:
        req = asyncio.run(reader.parse(OIP, body, shape))
    except RequestError as exc:
        return f"{exc.status} {exc}", None
    return "ok", req.inputs.tolist()


@pytest.mark.parametrize(
    "data",
    [list(range(600)), [[0.5] * 300, [0.5] * 299], [1.0] * 599 + ["x"], [1e39] * 600, [0.25] * 599 + [None]],
)
def test_the_worker_reads_a_large_body_as_the_event_loop_would(via_worker: RequestReader,
                                                               data: list[object]) -> None:
    body = _oip(data, (1, 600))
    assert len(body) > 1024
    inline = RequestReader()  # 256 kB inline: parsed on the spot
    assert _outcome(via_worker, body, (600,)) == _outcome(inline, body, (600,))


def test_a_worker_that_died_is_replaced_and_bad_bytes_are_refused(via_worker: RequestReader) -> None:
    body = _oip([0.5] * 600, (1, 600))
    assert _outcome(via_worker, body, (600,))[0] == "ok"
    (worker,) = [w for w in list(via_worker._workers._idle.queue) if w is not None]
    worker.process.kill()
    worker.process.join(10)
    assert _outcome(via_worker, body, (600,))[0] == "ok"  # a new worker parsed it
    status, _ = _outcome(via_worker, b'{"inputs": "\xff' + b" " * 2000 + b'"}', (600,))
    assert status.startswith("400 request body is not valid JSON")
