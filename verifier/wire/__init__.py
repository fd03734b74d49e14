"""The wire formats of model servers: one codec module per protocol, both ends.

Shared by the suspect client (``wm verify``), the reference server (``wm
serve``) and the guard, so that all three read a request or an answer the
same way:

- :mod:`verifier.wire.oip`: Open Inference Protocol / KServe V2;
- :mod:`verifier.wire.v1`: KServe V1 / TensorFlow Serving ``:predict``;
- :mod:`verifier.wire.torchserve`: TorchServe ``/predictions``;
- :mod:`verifier.wire.plain`: plain JSON (client only);
- :mod:`verifier.wire.tensors`: datatypes, strict numbers, answers to labels;
- :mod:`verifier.wire.transport`: HTTP with timeouts, a deadline, retries, caps;
- :mod:`verifier.wire.client`: the suspect client's base;
- :mod:`verifier.wire.inference` and :mod:`verifier.wire.incoming`: the one
  reader of incoming inference requests;
- :mod:`verifier.wire.detect`: choosing a client (``--protocol``, ``auto``).

Nothing here imports torch or a web framework.
"""

from verifier.wire.client import Detection, ProtocolName, SuspectAnswer, SuspectClient
from verifier.wire.detect import PROTOCOLS, detect, make_client
from verifier.wire.incoming import BodyLimits, RequestReader, parse_request, read_answer, route_of
from verifier.wire.inference import InferenceRequest, RequestError, Route
from verifier.wire.oip import OipClient
from verifier.wire.plain import JsonClient
from verifier.wire.tensors import AnswerColumn, DecodedAnswer, OutputKind, interpret_outputs
from verifier.wire.torchserve import TorchServeClient
from verifier.wire.transport import HttpSettings, parse_headers
from verifier.wire.v1 import TfServingClient

__all__ = [
    "PROTOCOLS",
    "AnswerColumn",
    "BodyLimits",
    "DecodedAnswer",
    "Detection",
    "HttpSettings",
    "InferenceRequest",
    "JsonClient",
    "OipClient",
    "OutputKind",
    "ProtocolName",
    "RequestError",
    "RequestReader",
    "Route",
    "SuspectAnswer",
    "SuspectClient",
    "TfServingClient",
    "TorchServeClient",
    "detect",
    "interpret_outputs",
    "make_client",
    "parse_headers",
    "parse_request",
    "read_answer",
    "route_of",
]
