"""Black-box verification: query a suspect's API, turn answers into signed, checkable evidence.

Public surface: the protocol codecs and suspect clients (:mod:`verifier.wire`),
the reference Open Inference Protocol server (:mod:`verifier.server`), the
statistics (:mod:`verifier.stats`), the query plan and session with its
transcript (:mod:`verifier.session`), evidence bundles and their offline check
(:mod:`verifier.evidence`), the HTML report (:mod:`verifier.report`), and
:func:`verify_suspect`, which runs ``wm verify`` end to end against the registry.

Importing the package loads none of them: each name below is imported from
its module on first use, so that ``import verifier.evidence`` (the offline
checker a third party runs) does not pay for torch or a web server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verifier.evidence import Checklist, Pins, build_bundle, check_bundle, read_bundle, write_bundle
    from verifier.report import render_report, write_report
    from verifier.server import ServedModel, build_app
    from verifier.session import (
        PlanItem,
        ProbeSource,
        QueryPlan,
        SessionResult,
        VerificationSession,
    )
    from verifier.stats import Statistics, TestInput, compute_statistics
    from verifier.transcript import read_transcript
    from verifier.verify import VerifyOptions, VerifyOutcome, load_sources, verify_suspect
    from verifier.wire import (
        Detection,
        HttpSettings,
        JsonClient,
        OipClient,
        SuspectAnswer,
        SuspectClient,
        TfServingClient,
        TorchServeClient,
        detect,
        interpret_outputs,
        make_client,
        parse_headers,
    )

_HOME = {
    "Checklist": "evidence",
    "Pins": "evidence",
    "build_bundle": "evidence",
    "check_bundle": "evidence",
    "read_bundle": "evidence",
    "write_bundle": "evidence",
    "render_report": "report",
    "write_report": "report",
    "ServedModel": "server",
    "build_app": "server",
    "PlanItem": "session",
    "ProbeSource": "session",
    "QueryPlan": "session",
    "SessionResult": "session",
    "VerificationSession": "session",
    "read_transcript": "transcript",
    "Statistics": "stats",
    "TestInput": "stats",
    "compute_statistics": "stats",
    "VerifyOptions": "verify",
    "VerifyOutcome": "verify",
    "load_sources": "verify",
    "verify_suspect": "verify",
    "Detection": "wire",
    "HttpSettings": "wire",
    "JsonClient": "wire",
    "OipClient": "wire",
    "SuspectAnswer": "wire",
    "SuspectClient": "wire",
    "TfServingClient": "wire",
    "TorchServeClient": "wire",
    "detect": "wire",
    "interpret_outputs": "wire",
    "make_client": "wire",
    "parse_headers": "wire",
}

__all__ = [
    "Checklist",
    "Detection",
    "HttpSettings",
    "JsonClient",
    "OipClient",
    "Pins",
    "PlanItem",
    "ProbeSource",
    "QueryPlan",
    "ServedModel",
    "SessionResult",
    "Statistics",
    "SuspectAnswer",
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
    "verify_suspect",
    "write_bundle",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'verifier' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"verifier.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
