"""The offline check of an evidence bundle, as a numbered checklist (DESIGN.md, "Trust").

The checker trusts nothing the bundle says about itself. It runs one
function per part, in order; each ends ``done``, ``failed`` or ``not done``
(a check the pins given do not allow, said plainly, never passed). After a
failure the later parts are not done. The parts:

 1. ``format``      a DSSE envelope over a ``wm.evidence/v2`` payload, every field typed
 2. ``owner-key``   the signature verifies under the owner key the checker pinned
 3. ``registry``    models and probe sets are log entries signed by that key, included
                    in its signed checkpoint, and say what the bundle says they do
 4. ``time``        each probe set's commitment is proven older than ``--suspect-since``
                    by a pinned RFC 3161 authority or pinned witnesses; others dropped
 5. ``nulls``       key-random kinds (watermark, guard) use exactly ``Binomial(1/C)``
 6. ``derivation``  opened derivation keys are the committed ones and re-derive
                    every opened label (and data-free input)
 7. ``openings``    each opened probe opens against its committed Merkle root
 8. ``counting``    each probe set, each (set, index) and each input counts once
 9. ``transcript``  the records name exactly the opened probes and included decoys
10. ``statistics``  recomputed from the transcript, equal to the signed ones
11. ``selection``   corrected for every probe set the owner had committed
12. ``verdict``     the verdict under the checker's pins is the bundle's

:class:`Checklist` ends with what the third party had to trust. The checks
themselves are :mod:`verifier.evidence.checks`, one function per part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from core.errors import EvidenceError, InputError, IntegrityError
from registry.cosign import WitnessKey
from verifier.evidence.checks import CHECKS, CheckFailed, CheckState, NotDone
from verifier.evidence.claims import BundleClaims

__all__ = ["PARTS", "CheckLine", "Checklist", "Pins", "Status", "check_bundle", "run_checks"]

Status = Literal["done", "failed", "not done"]

PARTS: tuple[tuple[str, str], ...] = (
    ("format", "bundle format"),
    ("owner-key", "signed by the pinned owner key"),
    ("registry", "commitments are signed log entries"),
    ("time", "commitments older than the suspect"),
    ("nulls", "nulls nobody chose"),
    ("derivation", "opened keys re-derive the probes"),
    ("openings", "probes open against their commitments"),
    ("counting", "each probe counted once"),
    ("transcript", "transcript names the opened probes"),
    ("statistics", "statistics recomputed"),
    ("selection", "corrected for every committed probe set"),
    ("verdict", "verdict under the checker's pins"),
)


@dataclass(frozen=True)
class Pins:
    """What the third party pinned itself; the checker trusts nothing else.

    Attributes:
        owner_key_ids: key ids of the owner keys accepted (from ``--owner-key``).
        trust_embedded_key: demo only: take the key inside the bundle (UNTRUSTED).
        tsa_ca_pem: trust anchors of RFC 3161 time-stamping authorities (``--tsa-ca``).
        witness_keys: the witnesses accepted (``--witness-key``, their ``FILE.pub``).
        suspect_since: count only commitments proven older than this (``--suspect-since``).
        key_source: how the owner key was pinned, in words (shown in the checklist).
    """

    owner_key_ids: frozenset[str] = frozenset()
    trust_embedded_key: bool = False
    tsa_ca_pem: bytes | None = None
    witness_keys: tuple[WitnessKey, ...] = ()
    suspect_since: datetime | None = None
    key_source: str = ""


@dataclass(frozen=True)
class CheckLine:
    """One line of the checklist."""

    number: int
    part: str
    title: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"number": self.number, "part": self.part, "title": self.title,
                "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class Checklist:
    """The outcome of checking a bundle: one line per part, and what had to be trusted.

    ``counted`` are the tests the verdict rests on (all, or those proven older
    than ``--suspect-since``), ``committed`` the count of probe sets the log
    proves, and ``claims`` the parsed bundle (for a replay).
    """

    lines: tuple[CheckLine, ...]
    trusted: tuple[str, ...]
    untrusted_key: bool
    suspect: str | None
    owner_key_id: str | None
    bundle_verdict: str | None
    verdict: str | None
    p_value: float | None
    model: str | None
    probes: int
    counted: tuple[int, ...] = field(default=())
    dropped: tuple[str, ...] = field(default=())
    committed: int | None = None
    claims: BundleClaims | None = field(default=None, repr=False, compare=False)

    @property
    def failure(self) -> CheckLine | None:
        """The first failed line, if any."""
        return next((ln for ln in self.lines if ln.status == "failed"), None)

    @property
    def valid(self) -> bool:
        """No check failed (and the verdict stands under the pins)."""
        return self.failure is None

    def to_dict(self) -> dict[str, Any]:
        """The object ``wm evidence check --json`` prints."""
        failure = self.failure
        return {
            "valid": failure is None,
            "part": failure.part if failure else None,
            "error": f"{failure.part}: {failure.detail}" if failure else None,
            "untrusted": self.untrusted_key,
            "checks": [ln.to_dict() for ln in self.lines],
            "trusted": list(self.trusted),
            "suspect": self.suspect,
            "owner_key_id": self.owner_key_id,
            "bundle_verdict": self.bundle_verdict,
            "verdict": self.verdict,
            "p_value": self.p_value,
            "model": self.model,
            "probes": self.probes,
            "counted": list(self.counted),
            "dropped": list(self.dropped),
        }


def run_checks(envelope: Any, pins: Pins) -> Checklist:
    """Check a bundle part by part; the checklist (a failed line where it failed).

    Args:
        envelope: the bundle as parsed JSON.
        pins: what the third party pinned.

    Raises:
        InputError: no owner key pinned and ``trust_embedded_key`` not set.
    """
    if not pins.owner_key_ids and not pins.trust_embedded_key:
        raise InputError("no owner key pinned", hint="pass --owner-key FILE (the owner.pub the "
                         "owner published) or its key id")
    st = CheckState(envelope=envelope, pins=pins)
    lines: list[CheckLine] = []
    failed = False
    for n, ((part, title), check) in enumerate(zip(PARTS, CHECKS, strict=True), start=1):
        if failed:
            lines.append(CheckLine(n, part, title, "not done", "an earlier check failed"))
            continue
        try:
            lines.append(CheckLine(n, part, title, "done", check(st)))
        except NotDone as exc:
            lines.append(CheckLine(n, part, title, "not done", str(exc)))
        except CheckFailed as exc:
            lines.append(CheckLine(n, part, title, "failed", str(exc)))
            failed = True
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError,
                RecursionError, InputError, IntegrityError) as exc:
            lines.append(CheckLine(n, part, title, "failed",
                                   f"the bundle is malformed ({type(exc).__name__}: {exc})"))
            failed = True
    claims = st.claims
    return Checklist(
        lines=tuple(lines),
        trusted=tuple(st.trusted),
        untrusted_key=not pins.owner_key_ids,
        suspect=claims.suspect_url if claims else None,
        owner_key_id=st.key_id,
        bundle_verdict=claims.verdict if claims else None,
        verdict=st.verdict,
        p_value=st.p_value,
        model=st.model,
        probes=st.stats.probes if st.stats else 0,
        counted=tuple(st.kept) if not failed else (),
        dropped=tuple(st.dropped),
        committed=st.checkpoint.probesets if st.checkpoint is not None else None,
        claims=claims,
    )


def check_bundle(envelope: Any, pins: Pins) -> Checklist:
    """Check a bundle; its checklist, or :class:`EvidenceError` naming the part that failed.

    Raises:
        EvidenceError: ``part`` is the failed check (one of :data:`PARTS`).
        InputError: no owner key pinned and ``trust_embedded_key`` not set.
    """
    checklist = run_checks(envelope, pins)
    failure = checklist.failure
    if failure is not None:
        raise EvidenceError(failure.detail, part=failure.part)
    return checklist
