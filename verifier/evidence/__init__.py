"""Evidence bundles: built and signed by ``wm verify``, checked offline by anyone.

:mod:`~verifier.evidence.bundle` writes and reads the signed bundle;
:mod:`~verifier.evidence.claims` parses what it claims, strictly;
:mod:`~verifier.evidence.checklist` checks it as a numbered checklist (one
function per part in :mod:`~verifier.evidence.checks`) against
what the third party pinned (:class:`Pins`), and :mod:`~verifier.evidence.dating`
learns when its commitments existed from pinned authorities and witnesses.
Importing this package loads neither torch nor a web server (a test proves it),
so a third party checks a bundle without the ML stack.
"""

from verifier.evidence.bundle import EVIDENCE_TYPE, PAYLOAD_TYPE, build_bundle, read_bundle, write_bundle
from verifier.evidence.checklist import PARTS, CheckLine, Checklist, Pins, Status, check_bundle, run_checks

__all__ = [
    "EVIDENCE_TYPE",
    "PARTS",
    "PAYLOAD_TYPE",
    "CheckLine",
    "Checklist",
    "Pins",
    "Status",
    "build_bundle",
    "check_bundle",
    "read_bundle",
    "run_checks",
    "write_bundle",
]
