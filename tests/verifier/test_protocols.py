"""Suspect clients against real loopback servers: the reference server and misbehaving ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from core.errors import InputError, SuspectError
from core.modelio import load_model, save_model
from core.serving import BackgroundServer, bind, running_server, url_of
from verifier.server import ServedModel, build_app
from verifier.wire import (
    HttpSettings,
    JsonClient,
    OipClient,
    detect,
    interpret_outputs,
    make_client,
    parse_headers,
)
from verifier.wire.transport import retry_after

from .helpers import deployed_app, dropping_server, label_of, misbehaving_app, untrained

X = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("proto") / "m.pt2"
    save_model(untrained("cnn"), path, input_shape=(1, 8, 8), num_classes=10, arch="cnn")
    return path


@pytest.fixture(scope="module")
def reference(model_path: Path) -> Iterator[BackgroundServer]:
    loaded = load_model(model_path)
    app = build_app({f"m-{o}": ServedModel(loaded, o) for o in ("labels", "probabilities", "logits")})
    with running_server(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def expected(model_path: Path) -> np.ndarray:
    return load_model(model_path)(X).argmax(1).numpy()


@pytest.fixture(scope="module")
def bad() -> Iterator[BackgroundServer]:
    with running_server(misbehaving_app()) as srv:
        yield srv


def _client(url: str, protocol: str = "oip", **settings: object) -> OipClient:
    s = HttpSettings(**{"timeout": 5.0, "retries": 2, "backoff": 0.01, **settings})  # type: ignore[arg-type]
    return make_client(protocol, url, num_classes=10, input_shape=(1, 8, 8), settings=s)  # type: ignore[return-value]


@pytest.mark.parametrize("output", ["labels", "probabilities", "logits"])
@pytest.mark.parametrize(
    ("protocol", "path"),
    [
        ("oip", "/v2/models/m-{o}/infer"),
        ("oip", "/v2/models/m-{o}"),
        ("oip", "/v2/models/m-{o}/versions/1/infer"),
        ("tfserving", "/v1/models/m-{o}:predict"),
        ("tfserving", "/v1/models/m-{o}"),
        ("torchserve", "/predictions/m-{o}"),
        ("json", "/v1/models/m-{o}:predict"),
    ],
)
def test_every_protocol_gets_the_models_labels(
    reference: BackgroundServer, expected: np.ndarray, protocol: str, path: str, output: str
) -> None:
    url = reference.url + path.format(o=output)
    kwargs = {"input_field": "instances", "output_field": "predictions"} if protocol == "json" else {}
    with make_client(protocol, url, num_classes=10, input_shape=(1, 8, 8), **kwargs) as client:
        client.describe()
        x = X.numpy()
        rows = [x[i : i + 1] for i in range(5)] if client.max_batch == 1 else [x]
        labels = np.concatenate([client.infer(r).labels for r in rows])
        kind = client.infer(rows[0]).output
    assert labels.tolist() == expected.tolist()
    assert kind == output


@pytest.mark.parametrize(
    ("path", "protocol", "words"),
    [
        ("/v2/models/m-labels/infer", "oip", "Open Inference Protocol V2 model 'm-labels'"),
        ("/v2/models/m-probabilities/", "oip", "output 'output-0' FP32 [-1, 10]"),
        ("/v1/models/m-labels:predict", "tfserving", "KServe V1"),
        ("/predictions/m-logits", "torchserve", "TorchServe model 'm-logits'"),
    ],
)
def test_auto_detection_says_what_it_found(
    reference: BackgroundServer, path: str, protocol: str, words: str
) -> None:
    client, found = detect(reference.url + path, num_classes=10, input_shape=(1, 8, 8))
    client.close()
    assert found.protocol == protocol
    assert words in found.detail


def test_auto_detection_refuses_an_unknown_form_and_an_unknown_model(reference: BackgroundServer) -> None:
    with pytest.raises(InputError, match="cannot tell the protocol"):
        detect(reference.url + "/predict", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(SuspectError, match="no Open Inference Protocol model"):
        detect(reference.url + "/v2/models/nobody", num_classes=10, input_shape=(1, 8, 8))


def test_oip_metadata_with_another_input_shape_is_refused(reference: BackgroundServer) -> None:
    client = make_client("oip", reference.url + "/v2/models/m-labels", num_classes=10,
                         input_shape=(3, 8, 8))
    with pytest.raises(SuspectError, match="takes inputs"):
        client.describe()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("garbage", "not valid JSON"),
        ("nan", "contains NaN, which is not a number"),
        ("short", "4 labels for 5 inputs"),
        ("classes", "7 scores per input; the model has 10 classes"),
        ("range", "label outside 0..9"),
        ("strings", "datatype 'BYTES'"),
        ("mismatch", "holds 5 values but its shape"),
        ("servererror", "HTTP 500: model crashed"),
        ("nobody", "HTTP 404"),
    ],
)
def test_bad_answers_are_refused_with_a_clear_message(bad: BackgroundServer, name: str, message: str) -> None:
    with _client(f"{bad.url}/v2/models/{name}/infer") as client, pytest.raises(SuspectError, match=message):
        client.infer(X.numpy())


def test_429_retry_after_is_honoured(bad: BackgroundServer) -> None:
    waits: list[float] = []
    client = make_client("oip", f"{bad.url}/v2/models/busy429", num_classes=10, input_shape=(1, 8, 8),
                         settings=HttpSettings(retries=3), sleep=waits.append)
    answer = client.infer(X.numpy())
    assert waits == [1.0, 1.0]
    assert answer.attempts == 3
    assert answer.labels.tolist() == [3] * 5


def test_503_is_retried_with_backoff_then_gives_up(bad: BackgroundServer) -> None:
    waits: list[float] = []
    client = make_client("oip", f"{bad.url}/v2/models/busy503", num_classes=10, input_shape=(1, 8, 8),
                         settings=HttpSettings(retries=2, backoff=0.5), sleep=waits.append)
    assert client.infer(X.numpy()).attempts == 2
    assert len(waits) == 1 and 0.25 <= waits[0] <= 0.5
    down = make_client("oip", f"{bad.url}/v2/models/down503", num_classes=10, input_shape=(1, 8, 8),
                       settings=HttpSettings(retries=2, backoff=0.5), sleep=waits.append)
    with pytest.raises(SuspectError, match="HTTP 503: down"):
        down.infer(X.numpy())
    assert bad.url and len(waits) == 3


def test_an_absurd_retry_after_is_an_error_not_a_wait(bad: BackgroundServer) -> None:
    with _client(f"{bad.url}/v2/models/longwait") as client, pytest.raises(
        SuspectError, match="retry after 3600 s"
    ):
        client.infer(X.numpy())


def test_slow_suspect_times_out(bad: BackgroundServer) -> None:
    waits: list[float] = []
    client = make_client("oip", f"{bad.url}/v2/models/slow", num_classes=10, input_shape=(1, 8, 8),
                         settings=HttpSettings(timeout=0.3, retries=1, backoff=0.01), sleep=waits.append)
    with client, pytest.raises(SuspectError, match=r"did not answer within 0.3 s \(2 attempts\)"):
        client.infer(X.numpy())
    assert len(waits) == 1 and waits[0] <= 0.01  # one backoff between the two timed-out attempts


def test_huge_answer_is_cut_off(bad: BackgroundServer) -> None:
    with _client(f"{bad.url}/v2/models/huge", max_response_bytes=1 << 20) as client, pytest.raises(
        SuspectError, match=r"over the 1048576-byte cap|exceeds the 1048576-byte cap"
    ):
        client.infer(X.numpy())


def test_connection_drop_is_retried_then_reported() -> None:
    with dropping_server() as (url, accepted):
        with _client(f"{url}/v2/models/m/infer", retries=2) as client, pytest.raises(
            SuspectError, match=r"cannot reach the suspect .* \(3 attempts\)"
        ):
            client.infer(X.numpy())
        assert accepted[0] == 3


def test_unreachable_suspect() -> None:
    down = bind(listen=False)  # holds its port and refuses every connection
    try:
        with _client(f"{url_of(down)}/v2/models/m/infer", retries=1) as client, pytest.raises(
            SuspectError, match="cannot reach the suspect"
        ):
            client.infer(X.numpy())
    finally:
        down.close()


def test_header_carries_authentication(bad: BackgroundServer) -> None:
    with _client(f"{bad.url}/v2/models/auth") as client, pytest.raises(
        SuspectError, match=r"HTTP 401: unauthorised"
    ) as info:
        client.infer(X.numpy())
    assert "pass credentials with --header" in info.value.diagnostics()
    headers = parse_headers(["Authorization: Bearer s3cret"])
    with _client(f"{bad.url}/v2/models/auth", headers=headers) as client:
        client.describe()
        assert client.infer(X.numpy()).labels.tolist() == [3] * 5


@pytest.mark.parametrize(
    ("items", "result"),
    [
        (["Authorization: Bearer x"], {"Authorization": "Bearer x"}),
        (["X-Api-Key:abc", "X-Other:  y "], {"X-Api-Key": "abc", "X-Other": "y"}),
        (["no colon"], None),
        ([": empty name"], None),
        (["bad name: v"], None),
    ],
)
def test_parse_headers(items: list[str], result: dict[str, str] | None) -> None:
    if result is None:
        with pytest.raises(InputError, match="--header needs the form"):
            parse_headers(items)
    else:
        assert parse_headers(items) == result


@pytest.mark.parametrize(
    ("values", "labels", "kind"),
    [
        ([1, 2, 0], [1, 2, 0], "labels"),
        ([[1], [2], [0]], [1, 2, 0], "labels"),
        ([1.0, 2.0, 0.0], [1, 2, 0], "labels"),
        ([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0, 0, 1]], [1, 0, 2], "probabilities"),
        ([[-1.0, 3.0, 2.0], [5.0, 0.0, 0.0], [0.0, 0.0, 0.1]], [1, 0, 2], "logits"),
    ],
)
def test_interpret_outputs(values: list, labels: list[int], kind: str) -> None:
    got, got_kind = interpret_outputs(values, n=3, num_classes=3)
    assert got.tolist() == labels and got_kind == kind


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1.5, 2, 0], "non-integers"),
        ([1, 2], "2 labels for 3 inputs"),
        ([[1, 2], [1, 2], [1, 2]], "2 scores per input"),
        ([1, "a", 0], "holds a str"),
        ([1, None, 0], "holds a NoneType"),
        ([1, True, 0], "holds a bool"),
        ([[1, 2, 3], [1, 2], [1]], "not a rectangular array"),
        ([[[1, 2, 3]]] * 3, "has shape"),
        ([float("nan"), 0, 1], "NaN"),
        ([-1, 0, 1], "label outside"),
    ],
)
def test_interpret_outputs_refuses(values: list, message: str) -> None:
    with pytest.raises(SuspectError, match=message):
        interpret_outputs(values, n=3, num_classes=3)


def test_client_uses_an_injected_transport() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"result": {"labels": [4, 4, 4, 4, 4]}})

    client = JsonClient("http://suspect.invalid/api", num_classes=10, input_shape=(1, 8, 8),
                        output_field="result.labels", transport=httpx.MockTransport(handler))
    assert client.infer(X.numpy()).labels.tolist() == [4] * 5
    body = seen[0].read()
    sent = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
    assert sent.tobytes() == X.numpy().tobytes()


def test_bad_urls_are_input_errors() -> None:
    with pytest.raises(InputError, match="http:// or https://"):
        make_client("oip", "ftp://x/v2/models/m", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="looks like http://HOST/v2/models/NAME"):
        make_client("oip", "http://x/models/m", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="unknown protocol 'grpc'"):
        make_client("grpc", "http://x/", num_classes=10, input_shape=(1, 8, 8))


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [("7", 7, 7), ("0", 0, 0), (None, None, None), ("soon", None, None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0, 0)],
)
def test_retry_after_forms(value: str | None, low: float | None, high: float | None) -> None:
    got = retry_after(value)
    if low is None:
        assert got is None
    else:
        assert got is not None and low <= got <= high  # type: ignore[operator]


# ---------------------------------------------------------------- servers as deployed (issue 11)


@pytest.fixture(scope="module")
def deployed() -> Iterator[BackgroundServer]:
    with running_server(deployed_app()) as srv:
        yield srv


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("mlserver", "model declares no inputs: sending 'input-0' as FP32 [N, 1, 8, 8]"),
        ("bare", "model declares no inputs: sending 'input-0' as FP32 [N, 1, 8, 8]"),
        ("free", "input 'input-0' FP32 [-1, -1, -1, -1] as FP32 [N, 1, 8, 8]"),
        ("flat", "input 'input-0' FP32 [-1, 64] as FP32 [N, 64]"),
        ("nobatch", "input 'input-0' FP32 [1, 8, 8] as FP32 [N, 1, 8, 8]"),
        ("named", "input 'pixels' FP64 [-1, 1, 8, 8] as FP64 [N, 1, 8, 8], output 'scores'"),
    ],
)
def test_oip_servers_as_deployed_get_the_inputs_they_declare(
    deployed: BackgroundServer, name: str, words: str
) -> None:
    client, found = detect(f"{deployed.url}/v2/models/{name}/infer", num_classes=10, input_shape=(1, 8, 8))
    with client:
        assert words in found.detail
        answer = client.infer(X.numpy())
    assert answer.labels.tolist() == [label_of(r) for r in X.numpy()]


def test_input_name_overrides_the_metadata(deployed: BackgroundServer) -> None:
    url = f"{deployed.url}/v2/models/named/infer"
    with make_client("oip", url, num_classes=10, input_shape=(1, 8, 8), input_name="pixels") as client:
        client.describe()
        assert client.infer(X.numpy()).labels.tolist() == [label_of(r) for r in X.numpy()]
    with _client(url) as plain, make_client("oip", url, num_classes=10, input_shape=(1, 8, 8),
                                            input_name="image") as wrong:
        assert "model has no input 'image'" in wrong.describe().detail
        with pytest.raises(SuspectError, match="HTTP 400: bad input image"):
            wrong.infer(X.numpy())
        plain.describe()  # the metadata's own name
        assert plain.infer(X.numpy()).output == "probabilities"
    with pytest.raises(InputError, match="--input-name must not be empty"):
        make_client("oip", url, num_classes=10, input_shape=(1, 8, 8), input_name=" ")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bytes", "suspect model's input 'image' takes BYTES; the probes are floats"),
        ("wide", r"suspect model takes inputs \[-1, 3, 8, 8\]; the probes are \[1, 8, 8\]"),
    ],
)
def test_oip_inputs_that_cannot_carry_the_probes(deployed: BackgroundServer, name: str, message: str) -> None:
    with _client(f"{deployed.url}/v2/models/{name}") as client, pytest.raises(SuspectError, match=message):
        client.describe()


@pytest.mark.parametrize(("protocol", "path"), [("tfserving", "/v1/models/dicts"),
                                               ("torchserve", "/predictions/topk"),
                                               ("torchserve", "/predictions/record")])
def test_v1_and_torchserve_answers_as_dicts(deployed: BackgroundServer, protocol: str, path: str) -> None:
    x = X.numpy()
    with make_client(protocol, deployed.url + path, num_classes=10, input_shape=(1, 8, 8)) as client:
        client.describe()
        rows = [x[i : i + 1] for i in range(len(x))] if client.max_batch == 1 else [x]
        answers = [client.infer(r) for r in rows]
        labels = np.concatenate([a.labels for a in answers])
    assert labels.tolist() == [label_of(r) for r in x]
    # second choices (dark-knowledge sets): from the scores, or the map's runner-up; none from a bare label
    seconds = [a.seconds for a in answers]
    if path == "/predictions/record":
        assert all(s is None for s in seconds)
    elif path == "/predictions/topk":
        assert np.concatenate(seconds).tolist() == [(label_of(r) + 1) % 10 for r in x]
    else:  # probabilities 0.91 on the label, 0.01 elsewhere: the runner-up is the lowest other class
        assert np.concatenate(seconds).tolist() == [
            0 if label_of(r) != 0 else 1 for r in x]
