"""Clients for a suspect's black-box inference API, one per protocol, behind one base class.

Protocols (DESIGN.md, "Verifier"):

- ``oip``: Open Inference Protocol / KServe V2 (Triton, MLServer, KServe,
  TorchServe's v2): ``POST /v2/models/{name}[/versions/{v}]/infer`` with
  ``{"inputs": [{"name", "shape", "datatype": "FP32", "data"}]}``; metadata at
  ``GET /v2/models/{name}`` (KServe "Open Inference Protocol", REST section).
- ``tfserving``: KServe V1 / TensorFlow Serving REST: ``POST
  /v1/models/{name}:predict`` with ``{"instances": [...]}``, answer
  ``{"predictions": [...]}``; status at ``GET /v1/models/{name}``.
- ``torchserve``: ``POST /predictions/{name}``, one input per request (TorchServe
  batches on the server side); health at ``GET /ping``.
- ``json``: plain JSON, ``POST URL`` with ``{INPUT_FIELD: [inputs...]}`` and the
  answers at a dotted ``OUTPUT_FIELD`` path.

Answers may be labels (``[N]`` or ``[N, 1]``, any integer type, or integral
floats), probabilities or logits (``[N, C]``); they are validated (shape, class
count, NaN, types) and reduced to labels. HTTP goes through httpx with explicit
timeouts, retries with exponential backoff on connection errors, timeouts, 429
and 503 (honouring ``Retry-After``, RFC 9110 section 10.2.3), a cap on the
response size, and an injectable transport (``httpx.BaseTransport``) so tests
can put a real loopback server or a misbehaving handler behind it.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import httpx
import numpy as np

from core.canonical import parse_json
from core.errors import InputError, SuspectError

__all__ = [
    "PROTOCOLS",
    "Answer",
    "Detection",
    "HttpSettings",
    "JsonClient",
    "OipClient",
    "OutputKind",
    "ProtocolName",
    "SuspectClient",
    "TfServingClient",
    "TorchServeClient",
    "detect",
    "interpret_outputs",
    "make_client",
    "parse_headers",
]

ProtocolName = Literal["oip", "tfserving", "torchserve", "json"]
PROTOCOLS: tuple[str, ...] = ("auto", "oip", "tfserving", "torchserve", "json")
OutputKind = Literal["labels", "probabilities", "logits"]
_RETRY_STATUS = frozenset({429, 503})
_INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})


@dataclass(frozen=True)
class HttpSettings:
    """How a client talks HTTP.

    Attributes:
        timeout: seconds for connecting, and for each read or write.
        retries: further attempts after a connection error, timeout, 429 or 503.
        backoff: first backoff in seconds; doubles per attempt (with jitter), capped at 30 s.
        max_retry_after: a ``Retry-After`` longer than this is an error, not a wait.
        max_response_bytes: answers larger than this are refused.
        concurrency: most requests in flight at once.
        headers: extra request headers (for example ``Authorization``).
    """

    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.25
    max_retry_after: float = 120.0
    max_response_bytes: int = 16 << 20
    concurrency: int = 4
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise InputError(f"timeout must be positive, got {self.timeout}")
        if self.retries < 0:
            raise InputError(f"retries must be >= 0, got {self.retries}")
        if self.concurrency < 1:
            raise InputError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_response_bytes < 1024:
            raise InputError("max_response_bytes must be at least 1024")


def parse_headers(items: Sequence[str]) -> dict[str, str]:
    """Parse ``--header 'K: V'`` values; :class:`InputError` naming a malformed one."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep or not name or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise InputError("--header needs the form 'Name: value', got a value without one")
        if "\n" in value or "\r" in value:
            raise InputError(f"--header {name}: the value must be one line")
        out[name] = value.strip()
    return out


@dataclass(frozen=True)
class Answer:
    """One request and its validated answer.

    ``request_sha256``/``response_sha256`` are SHA-256 digests of the exact
    bytes sent and received; ``attempts`` counts retries too.
    """

    labels: np.ndarray
    output: OutputKind
    status: int
    request_sha256: str
    response_sha256: str
    attempts: int
    latency_s: float
    time: str


def _as_array(values: Any, what: str) -> np.ndarray:
    def check(v: Any, depth: int) -> None:
        if depth > 8:
            raise SuspectError(f"{what} is nested too deeply")
        if isinstance(v, list):
            for e in v:
                check(e, depth + 1)
        elif isinstance(v, bool) or not isinstance(v, int | float):
            raise SuspectError(f"{what} holds a {type(v).__name__}, not a number")

    check(values, 0)
    try:
        arr = np.asarray(values, dtype=np.float64)
    except ValueError as exc:
        raise SuspectError(f"{what} is not a rectangular array of numbers") from exc
    return arr


def interpret_outputs(
    values: Any, *, n: int, num_classes: int, datatype: str | None = None, what: str = "answer"
) -> tuple[np.ndarray, OutputKind]:
    """Validate a suspect's answers for ``n`` inputs and reduce them to labels.

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
    if datatype is not None and datatype not in _INT_TYPES | _FLOAT_TYPES:
        raise SuspectError(f"{what} has datatype {datatype!r}; expected an integer or float type")
    arr = values if isinstance(values, np.ndarray) else _as_array(values, what)
    arr = arr.astype(np.float64, copy=False)
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


def _parse_body(data: bytes, what: str) -> Any:
    try:
        return parse_json(data, what=what)
    except InputError as exc:
        raise SuspectError(str(exc)) from exc


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace")
    else:
        text = str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)
    text = " ".join(text.split())
    return text[:200] + ("..." if len(text) > 200 else "")


@dataclass(frozen=True)
class Detection:
    """What ``--protocol auto`` (or a metadata probe) found at the suspect."""

    protocol: ProtocolName
    url: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"protocol": self.protocol, "url": self.url, "detail": self.detail}


class SuspectClient(ABC):
    """A suspect's inference API: send a batch of inputs, get validated labels back.

    Args:
        url: the endpoint as its operator publishes it.
        num_classes: the task's class count.
        input_shape: the shape of one input ``[C, H, W]``.
        settings: timeouts, retries, caps, headers.
        transport: an ``httpx.BaseTransport`` (default: real HTTP).
        sleep: how to wait between retries (tests may record waits).
    """

    protocol: ClassVar[ProtocolName]
    max_batch: ClassVar[int | None] = None

    def __init__(
        self,
        url: str,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        settings: HttpSettings | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not re.match(r"^https?://[^/\s]+", url):
            raise InputError(f"suspect URL must be http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.num_classes = num_classes
        self.input_shape = tuple(int(s) for s in input_shape)
        self.settings = settings or HttpSettings()
        self._sleep = sleep
        s = self.settings
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(s.timeout),
            limits=httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency),
            headers={"User-Agent": "wm-verifier/1", **dict(s.headers)},
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def __enter__(self) -> SuspectClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what each protocol defines

    @abstractmethod
    def request_body(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        """The URL and JSON body that ask for the answers to inputs ``x`` ``[N, C, H, W]``."""

    @abstractmethod
    def parse_answer(self, doc: Any, n: int) -> tuple[np.ndarray, OutputKind]:
        """Labels and output kind from a parsed answer to ``n`` inputs."""

    @abstractmethod
    def describe(self) -> Detection:
        """Probe the endpoint's metadata; a :class:`Detection` or :class:`SuspectError`."""

    # -- HTTP

    def _send(self, method: str, url: str, body: bytes | None) -> tuple[int, bytes, int, float]:
        """One logical request with retries; ``(status, body, attempts, latency)``."""
        s = self.settings
        attempt = 0
        start = time.monotonic()
        while True:
            attempt += 1
            wait: float | None = None
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                with self._client.stream(method, url, content=body, headers=headers) as r:
                    if r.status_code in _RETRY_STATUS and attempt <= s.retries:
                        wait = _retry_after(r.headers.get("Retry-After"))
                        if wait is not None and wait > s.max_retry_after:
                            raise SuspectError(
                                f"suspect answered HTTP {r.status_code} and asks to retry after "
                                f"{wait:.0f} s, more than the {s.max_retry_after:.0f} s allowed"
                            )
                        if wait is None:
                            wait = self._backoff(attempt)
                    else:
                        data = self._read_capped(r)
                        return r.status_code, data, attempt, time.monotonic() - start
            except httpx.TimeoutException as exc:
                if attempt > s.retries:
                    raise SuspectError(
                        f"suspect at {url} did not answer within {s.timeout:g} s "
                        f"({attempt} attempts)"
                    ) from exc
                wait = self._backoff(attempt)
            except httpx.TransportError as exc:
                if attempt > s.retries:
                    raise SuspectError(
                        f"cannot reach the suspect at {url}: {type(exc).__name__} "
                        f"({attempt} attempts)",
                        hint="check the URL and that the server is up",
                    ) from exc
                wait = self._backoff(attempt)
            self._sleep(wait)

    def _backoff(self, attempt: int) -> float:
        base = min(30.0, self.settings.backoff * 2 ** (attempt - 1))
        return base * (0.5 + 0.5 * random.random())

    def _read_capped(self, r: httpx.Response) -> bytes:
        cap = self.settings.max_response_bytes
        declared = r.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise SuspectError(f"suspect's answer is {int(declared)} bytes, over the {cap}-byte cap")
        chunks: list[bytes] = []
        size = 0
        for chunk in r.iter_bytes():
            size += len(chunk)
            if size > cap:
                raise SuspectError(f"suspect's answer exceeds the {cap}-byte cap")
            chunks.append(chunk)
        return b"".join(chunks)

    def _get_json(self, url: str, what: str) -> tuple[int, Any]:
        status, data, _, _ = self._send("GET", url, None)
        if status != 200:
            return status, _error_text(data)
        return status, _parse_body(data, what)

    def infer(self, x: np.ndarray) -> Answer:
        """Send inputs ``x`` ``[N, C, H, W]`` (float32) in one request; the validated answer.

        Raises:
            SuspectError: unreachable after retries, an HTTP error, or an unusable answer.
        """
        n = int(x.shape[0])
        if self.max_batch is not None and n > self.max_batch:
            raise InputError(f"{self.protocol} takes at most {self.max_batch} inputs per request")
        url, doc = self.request_body(np.ascontiguousarray(x, dtype=np.float32))
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        when = _now()
        status, data, attempts, latency = self._send("POST", url, body)
        if status != 200:
            hint = None
            if status in (401, 403):
                hint = "pass credentials with --header 'Authorization: ...'"
            elif status == 404:
                hint = "check the model name in --suspect"
            raise SuspectError(f"suspect answered HTTP {status}: {_error_text(data)}", hint=hint)
        labels, kind = self.parse_answer(_parse_body(data, "suspect's answer"), n)
        return Answer(
            labels=labels,
            output=kind,
            status=status,
            request_sha256=hashlib.sha256(body).hexdigest(),
            response_sha256=hashlib.sha256(data).hexdigest(),
            attempts=attempts,
            latency_s=latency,
            time=when,
        )


def _nested(x: np.ndarray) -> list[Any]:
    # float32 -> float64 is exact, and JSON's shortest repr of that double reads back to it.
    out: list[Any] = x.astype(np.float64).tolist()
    return out


class OipClient(SuspectClient):
    """Open Inference Protocol / KServe V2 REST."""

    protocol = "oip"
    _URL = re.compile(
        r"^(?P<base>https?://[^/]+(?:/.*?)?)/v2/models/(?P<name>[^/]+)"
        r"(?:/versions/(?P<version>[^/]+))?(?:/infer)?/?$"
    )

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        m = self._URL.match(self.url)
        if m is None:
            raise InputError(
                f"an Open Inference Protocol URL looks like http://HOST/v2/models/NAME[/infer], "
                f"got {url!r}"
            )
        self.model_name = m["name"]
        version = f"/versions/{m['version']}" if m["version"] else ""
        self.model_url = f"{m['base']}/v2/models/{m['name']}{version}"
        self.input_name = "input-0"
        self.output_name: str | None = None
        self.wire_shape: tuple[int, ...] = self.input_shape

    def describe(self) -> Detection:
        status, meta = self._get_json(self.model_url, "model metadata")
        if status != 200 or not isinstance(meta, dict):
            raise SuspectError(
                f"no Open Inference Protocol model at {self.model_url} (HTTP {status}: {meta})"
            )
        inputs, outputs = meta.get("inputs"), meta.get("outputs")
        if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
            raise SuspectError(f"model metadata at {self.model_url} lists no inputs")
        first = inputs[0]
        self.input_name = str(first.get("name", self.input_name))
        shape = first.get("shape")
        if isinstance(shape, list) and all(isinstance(s, int) for s in shape):
            tail = [int(s) for s in shape[1:]]
            if -1 not in tail and tail != list(self.input_shape):
                if math.prod(tail) != math.prod(self.input_shape):
                    raise SuspectError(
                        f"suspect model takes inputs {shape}; the probes are {list(self.input_shape)}"
                    )
                self.wire_shape = tuple(tail)
        out_desc = ""
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            self.output_name = str(outputs[0].get("name")) if outputs[0].get("name") else None
            o = outputs[0]
            out_desc = f", output {o.get('name')!r} {o.get('datatype')} {o.get('shape')}"
        return Detection(
            "oip",
            f"{self.model_url}/infer",
            f"Open Inference Protocol V2 model {meta.get('name', self.model_name)!r} "
            f"(platform {meta.get('platform', '?')}), input {self.input_name!r} "
            f"{first.get('datatype')} {shape}{out_desc}",
        )

    def request_body(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        n = int(x.shape[0])
        shape = [n, *self.wire_shape]
        doc: dict[str, Any] = {
            "inputs": [
                {
                    "name": self.input_name,
                    "shape": shape,
                    "datatype": "FP32",
                    "data": x.reshape(-1).astype(np.float64).tolist(),
                }
            ]
        }
        if self.output_name is not None:
            doc["outputs"] = [{"name": self.output_name}]
        return f"{self.model_url}/infer", doc

    def parse_answer(self, doc: Any, n: int) -> tuple[np.ndarray, OutputKind]:
        if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list) or not doc["outputs"]:
            raise SuspectError("suspect's answer has no 'outputs' list")
        outs = doc["outputs"]
        chosen = next(
            (o for o in outs if isinstance(o, dict) and o.get("name") == self.output_name), outs[0]
        )
        if not isinstance(chosen, dict):
            raise SuspectError("suspect's output is not a JSON object")
        shape, datatype, data = chosen.get("shape"), chosen.get("datatype"), chosen.get("data")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise SuspectError("suspect's output has no valid 'shape'")
        if not isinstance(datatype, str):
            raise SuspectError("suspect's output has no 'datatype'")
        if not isinstance(data, list):
            raise SuspectError("suspect's output has no 'data' list")
        if datatype not in _INT_TYPES | _FLOAT_TYPES:
            raise SuspectError(
                f"suspect's output has datatype {datatype!r}; expected an integer or float type"
            )
        arr = _as_array(data, "suspect's output data").reshape(-1)
        if arr.size != math.prod(shape):
            raise SuspectError(
                f"suspect's output holds {arr.size} values but its shape {shape} needs {math.prod(shape)}"
            )
        return interpret_outputs(
            arr.reshape(shape), n=n, num_classes=self.num_classes, datatype=datatype,
            what="suspect's output",
        )


class TfServingClient(SuspectClient):
    """KServe V1 / TensorFlow Serving REST (``:predict``)."""

    protocol = "tfserving"
    _URL = re.compile(r"^(?P<base>https?://[^/]+(?:/.*?)?)/v1/models/(?P<name>[^/:]+)(?::predict)?/?$")

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        m = self._URL.match(self.url)
        if m is None:
            raise InputError(
                f"a KServe V1 / TF Serving URL looks like http://HOST/v1/models/NAME[:predict], "
                f"got {url!r}"
            )
        self.model_name = m["name"]
        self.model_url = f"{m['base']}/v1/models/{m['name']}"

    def describe(self) -> Detection:
        status, meta = self._get_json(self.model_url, "model status")
        if status != 200:
            raise SuspectError(f"no V1 model at {self.model_url} (HTTP {status}: {meta})")
        return Detection(
            "tfserving", f"{self.model_url}:predict",
            f"KServe V1 / TensorFlow Serving model {self.model_name!r} "
            f"({_error_text(json.dumps(meta).encode())})",
        )

    def request_body(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        return f"{self.model_url}:predict", {"instances": _nested(x)}

    def parse_answer(self, doc: Any, n: int) -> tuple[np.ndarray, OutputKind]:
        if not isinstance(doc, dict) or "predictions" not in doc:
            raise SuspectError("suspect's answer has no 'predictions'")
        preds = doc["predictions"]
        if isinstance(preds, list) and preds and all(isinstance(p, dict) for p in preds):
            preds = [_pick_field(p) for p in preds]
        return interpret_outputs(preds, n=n, num_classes=self.num_classes, what="suspect's predictions")


def _pick_field(p: Mapping[str, Any]) -> Any:
    """From a TF Serving named-output prediction, the scores or the class."""
    for name in ("probabilities", "scores", "logits", "label", "class", "classes", "class_ids"):
        if name in p:
            v = p[name]
            return v[0] if name == "class_ids" and isinstance(v, list) and len(v) == 1 else v
    raise SuspectError(f"prediction has none of the known fields (it has {sorted(p)[:5]})")


class TorchServeClient(SuspectClient):
    """TorchServe inference API: one input per ``POST /predictions/{name}``."""

    protocol = "torchserve"
    max_batch = 1
    _URL = re.compile(
        r"^(?P<base>https?://[^/]+(?:/.*?)?)/predictions/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?/?$"
    )

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        m = self._URL.match(self.url)
        if m is None:
            raise InputError(
                f"a TorchServe URL looks like http://HOST/predictions/NAME, got {url!r}"
            )
        self.model_name = m["name"]
        self.base = m["base"]

    def describe(self) -> Detection:
        status, meta = self._get_json(f"{self.base}/ping", "health status")
        if status != 200:
            raise SuspectError(f"no TorchServe at {self.base} (HTTP {status} on /ping)")
        return Detection("torchserve", self.url, f"TorchServe model {self.model_name!r} (ping: {meta})")

    def request_body(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        return self.url, {"data": _nested(x[0])}

    def parse_answer(self, doc: Any, n: int) -> tuple[np.ndarray, OutputKind]:
        if isinstance(doc, dict) and doc and all(isinstance(v, int | float) for v in doc.values()):
            # {"class": score, ...} (top-k, as TorchServe's classifier handlers answer)
            try:
                best = max(doc.items(), key=lambda kv: kv[1])[0]
                label = int(best)
            except ValueError as exc:
                raise SuspectError("suspect's answer maps class names that are not class indices") from exc
            return interpret_outputs([label], n=n, num_classes=self.num_classes)
        if isinstance(doc, int | float) and not isinstance(doc, bool):
            return interpret_outputs([doc], n=n, num_classes=self.num_classes)
        if isinstance(doc, list) and doc and not isinstance(doc[0], list):
            return interpret_outputs([doc], n=n, num_classes=self.num_classes)
        return interpret_outputs(doc, n=n, num_classes=self.num_classes)


class JsonClient(SuspectClient):
    """Plain JSON: ``{input_field: [inputs]}`` in, answers at ``output_field`` (dotted path) out."""

    protocol = "json"

    def __init__(self, url: str, *, input_field: str = "inputs", output_field: str = "outputs",
                 **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        if not input_field or not output_field:
            raise InputError("json protocol needs non-empty input and output fields")
        self.input_field = input_field
        self.output_path = output_field.split(".")

    def describe(self) -> Detection:
        return Detection(
            "json", self.url,
            f"plain JSON: inputs in {self.input_field!r}, answers at {'.'.join(self.output_path)!r}",
        )

    def request_body(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        return self.url, {self.input_field: _nested(x)}

    def parse_answer(self, doc: Any, n: int) -> tuple[np.ndarray, OutputKind]:
        v = doc
        for part in self.output_path:
            if not isinstance(v, dict) or part not in v:
                raise SuspectError(f"suspect's answer has no field {'.'.join(self.output_path)!r}")
            v = v[part]
        return interpret_outputs(v, n=n, num_classes=self.num_classes)


def make_client(protocol: str, url: str, **kwargs: Any) -> SuspectClient:
    """The client for a named protocol (not ``auto``: see :func:`detect`)."""
    match protocol:
        case "oip":
            return OipClient(url, **kwargs)
        case "tfserving":
            return TfServingClient(url, **kwargs)
        case "torchserve":
            return TorchServeClient(url, **kwargs)
        case "json":
            return JsonClient(url, **kwargs)
        case _:
            raise InputError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


def detect(url: str, **kwargs: Any) -> tuple[SuspectClient, Detection]:
    """``--protocol auto``: pick the protocol from the URL and confirm it with the metadata.

    Tries, in order, the URL forms of OIP (``/v2/models/NAME``), V1
    (``/v1/models/NAME``) and TorchServe (``/predictions/NAME``), and asks the
    endpoint's metadata route to confirm. A URL of none of these forms is an
    error asking for ``--protocol`` (plain JSON endpoints cannot be recognised).

    Raises:
        InputError: the URL has no known form. SuspectError: the endpoint does not confirm.
    """
    kwargs = {k: v for k, v in kwargs.items() if k not in ("input_field", "output_field")}
    stripped = url.rstrip("/")
    for cls in (OipClient, TfServingClient, TorchServeClient):
        if cls._URL.match(stripped):
            client = cls(url, **kwargs)
            try:
                return client, client.describe()
            except BaseException:
                client.close()
                raise
    raise InputError(
        f"cannot tell the protocol of {url!r} from its form",
        hint="give the model's URL (…/v2/models/NAME, …/v1/models/NAME, …/predictions/NAME) "
        "or pass --protocol json",
    )
