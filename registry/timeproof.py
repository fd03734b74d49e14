"""When did a checkpoint exist? Times proven by parties other than the owner, checked offline.

The evidence checker (``wm evidence check --witness-key ... --tsa-ca ...
--suspect-since TIME``) calls one function::

    prove_time(note, tsa_tokens=(token,), witness_keys=pinned, tsa_ca_pem=ca) -> TimeProof

``note`` is the checkpoint as carried in a proof bundle (the owner's signed
note, with any witness cosignature lines), ``tsa_tokens`` its RFC 3161
tokens (DER), ``witness_keys`` the witnesses the checker pinned
(:func:`registry.cosign.parse_witness_key` reads ``FILE.pub``) and
``tsa_ca_pem`` the time-stamping authorities it pinned. It imports neither
torch nor a web server, and never trusts the owner for a time:

- a cosignature by a pinned witness (C2SP tlog-cosignature v1) proves the
  checkpoint existed at its timestamp (the witness had seen it then, and it
  was consistent with everything that witness saw of the log before);
- an RFC 3161 token that verifies against a pinned authority and whose
  message imprint is the SHA-256 of the checkpoint's body proves it existed
  at the token's ``genTime``.

Cosignatures by unpinned keys and tokens without a pinned authority count for
nothing; the result says which were ignored and why. A cosignature line by a
pinned witness that does not verify, or a token that fails against a pinned
authority, is an :class:`~core.errors.IntegrityError` (tampered evidence),
not a silent skip. The owner's signature on the note is not checked here
(:func:`registry.proofs.check_proof_bundle` does that, against the pinned owner key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from core.errors import IntegrityError
from registry.cosign import WitnessKey, verify_cosignatures
from registry.note import Checkpoint, parse_checkpoint

__all__ = ["OWNERS_WORD_ONLY", "ProvenTime", "TimeProof", "prove_time"]

OWNERS_WORD_ONLY = "time: owner's word only"


@dataclass(frozen=True)
class ProvenTime:
    """One party's proof that the checkpoint existed at ``time`` (UTC)."""

    time: datetime
    by: str
    kind: Literal["cosignature", "rfc3161"]


@dataclass(frozen=True)
class TimeProof:
    """The times a checkpoint is proven to have existed, by whom, and what was not counted."""

    checkpoint: Checkpoint
    times: tuple[ProvenTime, ...]
    ignored: tuple[str, ...]

    @property
    def proven(self) -> bool:
        """Whether anyone other than the owner proves a time."""
        return bool(self.times)

    @property
    def existed_by(self) -> datetime | None:
        """The earliest proven time: the checkpoint existed no later than this (``None``: unproven)."""
        return min((t.time for t in self.times), default=None)

    def describe(self) -> str:
        """One line: the earliest proven time and who proves it, or that only the owner says."""
        if not self.times:
            return OWNERS_WORD_ONLY
        first = min(self.times, key=lambda t: t.time)
        others = len(self.times) - 1
        more = f" (and {others} more)" if others else ""
        when = first.time.isoformat(timespec="seconds").replace("+00:00", "Z")
        return f"time: existed by {when}, proven by {first.by}{more}"


def prove_time(
    note: str,
    *,
    tsa_tokens: Sequence[bytes] = (),
    witness_keys: Sequence[WitnessKey] = (),
    tsa_ca_pem: bytes | None = None,
) -> TimeProof:
    """The times ``note``'s checkpoint is proven to have existed; see the module docstring.

    Raises:
        IntegrityError: the note is malformed, a pinned witness's cosignature
            does not verify, or a token fails against the pinned authority.
    """
    checkpoint, _, _ = parse_checkpoint(note)
    times: list[ProvenTime] = []
    ignored: list[str] = []
    for c in verify_cosignatures(note, tuple(witness_keys)):
        when = datetime.fromtimestamp(c.timestamp, UTC)
        times.append(ProvenTime(when, f"witness {c.witness}", "cosignature"))
    if not witness_keys:
        ignored.append("cosignatures: no witness key pinned")
    if tsa_tokens and tsa_ca_pem is None:
        ignored.append(f"{len(tsa_tokens)} RFC 3161 token(s): no time-stamping authority pinned")
    elif tsa_ca_pem is not None:
        from registry.tsa import verify_timestamp

        body = checkpoint.body().encode("utf-8")
        for i, token in enumerate(tsa_tokens):
            try:
                info = verify_timestamp(token, body, ca_pem=tsa_ca_pem)
            except IntegrityError as exc:
                raise IntegrityError(f"RFC 3161 token {i + 1}: {exc}") from exc
            times.append(ProvenTime(info.gen_time.astimezone(UTC), f"TSA {info.tsa_subject}", "rfc3161"))
    return TimeProof(checkpoint=checkpoint, times=tuple(times), ignored=tuple(ignored))
