"""Black-box verification: query a suspect's API, turn answers into signed, checkable evidence.

Public surface: the protocol clients (:mod:`verifier.protocols`), the
reference Open Inference Protocol server (:mod:`verifier.server`), the
statistics (:mod:`verifier.stats`), the query plan and session with its
transcript (:mod:`verifier.session`), evidence bundles and their offline check
(:mod:`verifier.evidence`), the HTML report (:mod:`verifier.report`), and
:func:`verify_suspect`, which runs ``wm verify`` end to end against the registry.
"""

from verifier.evidence import BundleCheck, build_bundle, check_bundle, read_bundle, write_bundle
from verifier.protocols import (
    Answer,
    Detection,
    HttpSettings,
    JsonClient,
    OipClient,
    SuspectClient,
    TfServingClient,
    TorchServeClient,
    detect,
    interpret_outputs,
    make_client,
    parse_headers,
)
from verifier.report import render_report, write_report
from verifier.server import BackgroundServer, ServedModel, build_app, running_server
from verifier.session import (
    PlanItem,
    ProbeSource,
    QueryPlan,
    SessionResult,
    VerificationSession,
    read_transcript,
)
from verifier.stats import Statistics, TestInput, compute_statistics
from verifier.verify import VerifyOptions, VerifyOutcome, load_sources, verify_suspect

__all__ = [
    "Answer",
    "BackgroundServer",
    "BundleCheck",
    "Detection",
    "HttpSettings",
    "JsonClient",
    "OipClient",
    "PlanItem",
    "ProbeSource",
    "QueryPlan",
    "ServedModel",
    "SessionResult",
    "Statistics",
    "SuspectClient",
    "TestInput",
    "TfServingClient",
    "TorchServeClient",
    "VerificationSession",
    "VerifyOptions",
    "VerifyOutcome",
    "build_app",
    "build_bundle",
    "check_bundle",
    "compute_statistics",
    "detect",
    "interpret_outputs",
    "load_sources",
    "make_client",
    "parse_headers",
    "read_bundle",
    "read_transcript",
    "render_report",
    "running_server",
    "verify_suspect",
    "write_bundle",
    "write_report",
]
