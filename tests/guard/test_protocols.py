"""The guard's rewriting of marked rows in answers read by the shared codecs.

The reading itself (requests and answers, every protocol) is tested with the codecs, in
``tests/verifier/test_incoming.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.protocols import encode_marked
from guard.proxy import client_identity, upstream_base
from verifier.wire.incoming import read_answer
from verifier.wire.inference import Route

SHAPE = (1, 2, 2)


OIP = Route("oip", "m")


def _oip_answer(values: np.ndarray, datatype: str) -> bytes:
    return json.dumps({"model_name": "m", "outputs": [
        {"name": "y", "shape": list(values.shape), "datatype": datatype,
         "data": values.reshape(-1).tolist()}]}).encode()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.floats(0.001, 1.0), min_size=4, max_size=4), min_size=1, max_size=6),
    labels=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    probabilities=st.booleans(),
)
def test_marked_scores_have_the_marked_argmax(rows: list[list[float]], labels: list[int],
                                              probabilities: bool) -> None:
    raw = np.asarray(rows)
    values = raw / raw.sum(axis=1, keepdims=True) if probabilities else np.log(raw) * 3
    n = values.shape[0]
    answer = read_answer(OIP, _oip_answer(values, "FP32"), n, 4)
    marks = {i: labels[i] for i in range(0, n, 2)}
    doc = json.loads(encode_marked(answer, marks))
    out = np.asarray(doc["outputs"][0]["data"]).reshape(n, 4)
    for i in range(n):
        if i in marks:
            assert int(np.argmax(out[i])) == marks[i]
            assert np.allclose(np.sort(out[i]), np.sort(values[i]), atol=1e-5)  # a permutation
        else:
            assert np.array_equal(out[i], values[i])
    if probabilities:
        assert np.allclose(out.sum(axis=1), 1.0, atol=1e-6)


def test_ties_are_broken_toward_the_marked_label() -> None:
    values = np.array([[0.5, 0.5, 0.0, 0.0]])
    answer = read_answer(OIP, _oip_answer(values, "FP32"), 1, 4)
    out = np.asarray(json.loads(encode_marked(answer, {0: 2}))["outputs"][0]["data"])
    assert int(np.argmax(out)) == 2 and abs(out.sum() - 1) < 1e-9


@pytest.mark.parametrize(
    ("route", "body", "n", "marked"),
    [
        (OIP, _oip_answer(np.array([1, 2, 3]), "INT64"), 3, [1, 7, 3]),
        (OIP, _oip_answer(np.array([[1], [2], [3]]), "INT32"), 3, [1, 7, 3]),
        (Route("tfserving", "m"), b'{"predictions": [1, 2, 3]}', 3, [1, 7, 3]),
        (Route("torchserve", "m"), b"2", 1, None),
    ],
)
def test_label_answers_are_rewritten_in_their_own_form(route: Route, body: bytes, n: int,
                                                       marked: list[int] | None) -> None:
    answer = read_answer(route, body, n, 10)
    assert answer.kind == "labels"
    out = json.loads(encode_marked(answer, {1 if n > 1 else 0: 7}))
    if route.protocol == "oip":
        assert out["outputs"][0]["data"] == marked and out["model_name"] == "m"
    elif route.protocol == "tfserving":
        assert out["predictions"] == marked
    else:
        assert out == 7


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:8080/v2/models/digits/infer", ("http://h:8080", "digits")),
        ("http://h:8080/v1/models/digits:predict", ("http://h:8080", "digits")),
        ("http://h:8080/predictions/digits", ("http://h:8080", "digits")),
        ("http://h:8080/", ("http://h:8080", None)),
        ("http://h/api/v2/models/x", ("http://h/api", "x")),
    ],
)
def test_upstream_base(url: str, expected: tuple[str, str | None]) -> None:
    assert upstream_base(url) == expected


def test_client_identity_pseudonymises_credentials() -> None:
    pseudo = lambda v: "p" + str(len(v))  # noqa: E731
    assert client_identity({"authorization": "Bearer s3cret"}, "1.2.3.4", pseudo) == "key:p13"
    assert client_identity({"x-client-id": "team-a"}, "1.2.3.4", pseudo) == "x-client-id:team-a"
    assert client_identity({"x-forwarded-for": "9.9.9.9, 1.1.1.1"}, "1.2.3.4", pseudo) == "ip:9.9.9.9"
    assert client_identity({}, "1.2.3.4", pseudo) == "ip:1.2.3.4"
