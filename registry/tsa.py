"""Trusted time for checkpoints: RFC 3161 time-stamp requests and token checks.

Verifying a token is security-critical parsing, so it is done by the
maintained library ``rfc3161-client`` (the one sigstore-python uses), not by
hand: the CMS signature over the ``TSTInfo``, the message imprint, the TSA
certificate's critical time-stamping extended key usage, and its chain to an
authority the checker pinned (``--tsa-ca``). Without a pinned authority a
token proves nothing and is not counted.

:func:`request_timestamp` asks an authority over HTTP (RFC 3161 section 3.4)
for a token over some bytes (wm stamps a checkpoint's body, the C2SP
``origin/size/root`` text) and returns the DER ``TimeStampToken`` that the
registry stores beside the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import rfc3161_client
from cryptography import x509

from core.errors import IntegrityError, RegistryError
from registry._der import enc_int, tlv

__all__ = ["TimestampInfo", "request_timestamp", "verify_timestamp"]

_MAX_RESPONSE = 1 << 20


@dataclass(frozen=True)
class TimestampInfo:
    """What a verified token says: when, by whom, under which policy."""

    gen_time: datetime
    serial: int
    policy: str
    nonce: int | None
    tsa_subject: str


def request_timestamp(url: str, data: bytes, *, timeout: float = 30.0) -> bytes:
    """Ask the authority at ``url`` to time-stamp ``data`` (SHA-256 imprint, a nonce); the DER token.

    The answer must be granted, stamp this data and echo the nonce; who signed
    it is checked only later, against the checker's pinned authority.

    Raises:
        RegistryError: the authority is unreachable or refuses.
        IntegrityError: its answer is malformed, for other data, or another request.
    """
    request = (
        rfc3161_client.TimestampRequestBuilder()
        .data(data)
        .hash_algorithm(rfc3161_client.HashAlgorithm.SHA256)
        .nonce(nonce=True)
        .cert_request(cert_request=True)
        .build()
    )
    try:
        resp = httpx.post(
            url,
            content=request.as_bytes(),
            headers={"Content-Type": "application/timestamp-query"},
            timeout=httpx.Timeout(timeout),
        )
    except httpx.HTTPError as exc:
        raise RegistryError(f"time-stamping authority {url} is unreachable: {type(exc).__name__}") from exc
    if resp.status_code != 200:
        raise RegistryError(f"time-stamping authority {url} answered HTTP {resp.status_code}")
    if len(resp.content) > _MAX_RESPONSE:
        raise RegistryError(f"time-stamping authority {url} answered more than 1 MiB")
    try:
        answer = rfc3161_client.decode_timestamp_response(resp.content)
    except ValueError as exc:
        raise IntegrityError(f"time-stamping authority {url} answered no RFC 3161 response") from exc
    if rfc3161_client.PKIStatus(answer.status) not in (
        rfc3161_client.PKIStatus.GRANTED,
        rfc3161_client.PKIStatus.GRANTED_WITH_MODS,
    ):
        raise RegistryError(f"time-stamping authority {url} refused the request (status {answer.status})")
    info = answer.tst_info
    if info.nonce != request.nonce:
        raise IntegrityError("time-stamp token answers another request (nonce differs)")
    if info.message_imprint.message != request.message_imprint.message:
        raise IntegrityError("time-stamp token is for other data (imprint differs)")
    return bytes(answer.time_stamp_token())


def _as_response(token: bytes) -> rfc3161_client.TimeStampResponse:
    """A granted ``TimeStampResp`` around a stored token (RFC 3161 section 2.4.2), parsed."""
    der = tlv(0x30, tlv(0x30, enc_int(0)) + token)
    try:
        return rfc3161_client.decode_timestamp_response(der)
    except ValueError as exc:
        raise IntegrityError("time-stamp token is malformed") from exc


def verify_timestamp(token: bytes, data: bytes, *, ca_pem: bytes) -> TimestampInfo:
    """Check an RFC 3161 token over ``data`` against a pinned authority; what it says.

    Args:
        token: DER ``TimeStampToken`` (CMS ContentInfo).
        data: the bytes that were time-stamped.
        ca_pem: PEM certificates of the authorities the checker trusts; the TSA
            certificate must chain to one of them.

    Raises:
        IntegrityError: malformed token, another imprint, a bad signature, a
            certificate not for time-stamping, or not issued by a pinned authority.
    """
    response = _as_response(token)
    try:
        roots = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise IntegrityError("the pinned time-stamping authority file holds no PEM certificate") from exc
    builder = rfc3161_client.VerifierBuilder()
    for root in roots:
        builder = builder.add_root_certificate(root)
    try:
        builder.build().verify_message(response, data)
    except rfc3161_client.VerificationError as exc:
        reason = str(exc).strip().rstrip(".") or type(exc).__name__
        if "Mismatch between messages" in reason:
            raise IntegrityError("time-stamp token is for other data (imprint differs)") from exc
        raise IntegrityError(f"time-stamp token does not verify: {reason}") from exc
    info = response.tst_info
    certs = [x509.load_der_x509_certificate(c) for c in response.signed_data.certificates]
    signer = next(iter(response.signed_data.signer_infos))
    subject = next(
        (c.subject.rfc4514_string() for c in certs if c.serial_number == signer.serial_number), ""
    )
    return TimestampInfo(
        gen_time=info.gen_time.replace(tzinfo=UTC) if info.gen_time.tzinfo is None else info.gen_time,
        serial=info.serial_number,
        policy=info.policy.dotted_string if info.policy is not None else "",
        nonce=info.nonce,
        tsa_subject=subject,
    )
