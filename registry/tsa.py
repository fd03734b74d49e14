"""Trusted time for checkpoints: RFC 3161 time-stamp requests and token checks.

:func:`request_timestamp` sends a ``TimeStampReq`` (RFC 3161 section 2.4.1,
SHA-256 imprint, a nonce, ``certReq``) over HTTP (section 3.4) and returns the
``TimeStampToken`` (a CMS ``SignedData``, RFC 5652, wrapping a ``TSTInfo``).
:func:`verify_timestamp` checks a token offline: the imprint is the SHA-256 of
the data, the ``messageDigest`` attribute is the digest of the ``TSTInfo``, the
signature over the signed attributes verifies under the certificate the token
carries, that certificate is for time-stamping (extended key usage) and was
valid at the stamped time, and, given a trust anchor, was issued by it.
The few DER structures involved are read by a small strict parser here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from core.errors import IntegrityError, RegistryError
from registry._der import enc_int as _enc_int
from registry._der import enc_oid as _enc_oid
from registry._der import tlv as _tlv

__all__ = ["TimestampInfo", "encode_request", "request_timestamp", "verify_timestamp"]

# Object identifiers (DER content bytes).
_OID_SHA256 = "2.16.840.1.101.3.4.2.1"
_HASHES: dict[str, tuple[hashes.HashAlgorithm, str]] = {
    "2.16.840.1.101.3.4.2.1": (hashes.SHA256(), "sha256"),
    "2.16.840.1.101.3.4.2.2": (hashes.SHA384(), "sha384"),
    "2.16.840.1.101.3.4.2.3": (hashes.SHA512(), "sha512"),
}
_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_TSTINFO = "1.2.840.113549.1.9.16.1.4"
_OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_MAX_RESPONSE = 1 << 20


# ------------------------------------------------------------------ DER


class _Der:
    """One DER element: tag byte, where its content lies, and the whole encoding's span."""

    __slots__ = ("data", "end", "start", "tag", "tlv_start")

    def __init__(self, data: bytes, tag: int, tlv_start: int, start: int, end: int) -> None:
        self.data, self.tag, self.tlv_start, self.start, self.end = data, tag, tlv_start, start, end

    @property
    def content(self) -> bytes:
        return self.data[self.start : self.end]

    @property
    def encoded(self) -> bytes:
        return self.data[self.tlv_start : self.end]

    def children(self) -> list[_Der]:
        out, pos = [], self.start
        while pos < self.end:
            child = _read(self.data, pos, self.end)
            out.append(child)
            pos = child.end
        return out

    def expect(self, tag: int, what: str) -> _Der:
        if self.tag != tag:
            raise IntegrityError(f"{what}: expected DER tag 0x{tag:02x}, found 0x{self.tag:02x}")
        return self


def _read(data: bytes, pos: int, limit: int) -> _Der:
    if pos + 2 > limit:
        raise IntegrityError("truncated DER")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise IntegrityError("unsupported DER tag")
    length = data[pos + 1]
    i = pos + 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or i + n > limit:
            raise IntegrityError("bad DER length")
        length = int.from_bytes(data[i : i + n], "big")
        i += n
    if i + length > limit:
        raise IntegrityError("truncated DER")
    return _Der(data, tag, pos, i, i + length)


def _parse(data: bytes) -> _Der:
    top = _read(data, 0, len(data))
    if top.end != len(data):
        raise IntegrityError("trailing bytes after DER")
    return top


def _oid(el: _Der) -> str:
    el.expect(0x06, "object identifier")
    raw = el.content
    if not raw:
        raise IntegrityError("empty object identifier")
    parts, value = [], 0
    for b in raw:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    first = min(parts[0] // 40, 2)
    return ".".join(str(x) for x in [first, parts[0] - 40 * first, *parts[1:]])


def _int(el: _Der) -> int:
    el.expect(0x02, "integer")
    return int.from_bytes(el.content, "big", signed=True)


# ------------------------------------------------------------------ request


def encode_request(digest: bytes, nonce: int) -> bytes:
    """DER ``TimeStampReq`` for a SHA-256 ``digest``, asking for the TSA's certificate."""
    alg = _tlv(0x30, _enc_oid(_OID_SHA256) + b"\x05\x00")
    imprint = _tlv(0x30, alg + _tlv(0x04, digest))
    return _tlv(0x30, _enc_int(1) + imprint + _enc_int(nonce) + b"\x01\x01\xff")


def request_timestamp(url: str, data: bytes, *, timeout: float = 30.0) -> bytes:
    """Ask the authority at ``url`` to time-stamp ``data``; the DER token.

    The token is checked (:func:`verify_timestamp`, without a trust anchor) and
    its nonce compared before it is returned.

    Raises:
        RegistryError: the authority is unreachable or refuses.
        IntegrityError: its answer does not verify.
    """
    nonce = int.from_bytes(os.urandom(8), "big")
    body = encode_request(hashlib.sha256(data).digest(), nonce)
    try:
        resp = httpx.post(
            url,
            content=body,
            headers={"Content-Type": "application/timestamp-query"},
            timeout=httpx.Timeout(timeout),
        )
    except httpx.HTTPError as exc:
        raise RegistryError(f"time-stamping authority {url} is unreachable: {type(exc).__name__}") from exc
    if resp.status_code != 200:
        raise RegistryError(f"time-stamping authority {url} answered HTTP {resp.status_code}")
    if len(resp.content) > _MAX_RESPONSE:
        raise RegistryError(f"time-stamping authority {url} answered more than 1 MiB")
    top = _parse(resp.content).expect(0x30, "TimeStampResp")
    parts = top.children()
    if not parts:
        raise IntegrityError("time-stamp response is empty")
    status = _int(parts[0].expect(0x30, "PKIStatusInfo").children()[0])
    if status not in (0, 1) or len(parts) < 2:
        raise RegistryError(f"time-stamping authority {url} refused the request (status {status})")
    token = parts[1].encoded
    info = verify_timestamp(token, data)
    if info.nonce != nonce:
        raise IntegrityError("time-stamp token answers another request (nonce differs)")
    return token


# ------------------------------------------------------------------ verification


@dataclass(frozen=True)
class TimestampInfo:
    """What a verified token says: when, by whom, under which policy."""

    gen_time: datetime
    serial: int
    policy: str
    nonce: int | None
    tsa_subject: str


def _gen_time(el: _Der) -> datetime:
    el.expect(0x18, "genTime")
    raw = el.content.decode("ascii")
    if not raw.endswith("Z"):
        raise IntegrityError("genTime is not in UTC")
    main, _, frac = raw[:-1].partition(".")
    t = datetime.strptime(main, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    if frac:
        t = t.replace(microsecond=int((frac + "000000")[:6]))
    return t


def _verify_sig(cert: x509.Certificate, sig: bytes, data: bytes, digest: hashes.HashAlgorithm) -> None:
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, data, padding.PKCS1v15(), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(digest))
        elif isinstance(key, Ed25519PublicKey):
            key.verify(sig, data)
        else:
            raise IntegrityError("the TSA certificate's key type is not supported")
    except InvalidSignature as exc:
        raise IntegrityError("the token's signature does not verify") from exc


def verify_timestamp(token: bytes, data: bytes, *, ca_pem: bytes | None = None) -> TimestampInfo:
    """Check an RFC 3161 token over ``data``; what it says.

    Args:
        token: DER ``TimeStampToken`` (CMS ContentInfo).
        data: the bytes that were time-stamped.
        ca_pem: PEM certificates to trust; the TSA certificate must be one of
            them or issued directly by one. Without it the certificate is taken
            from the token as is.

    Raises:
        IntegrityError: malformed token, another imprint, a bad signature, a
            certificate not for time-stamping, not valid then, or not trusted.
    """
    try:
        return _verify(token, data, ca_pem)
    except (IndexError, ValueError, UnicodeDecodeError, UnsupportedAlgorithm) as exc:
        raise IntegrityError(f"time-stamp token is malformed ({type(exc).__name__})") from exc


def _verify(token: bytes, data: bytes, ca_pem: bytes | None) -> TimestampInfo:
    content_info = _parse(token).expect(0x30, "ContentInfo").children()
    if _oid(content_info[0]) != _OID_SIGNED_DATA:
        raise IntegrityError("time-stamp token is not CMS signed data")
    signed = content_info[1].expect(0xA0, "content").children()[0].expect(0x30, "SignedData")
    fields = signed.children()
    encap = fields[2].expect(0x30, "encapContentInfo").children()
    if _oid(encap[0]) != _OID_TSTINFO:
        raise IntegrityError("time-stamp token does not hold a TSTInfo")
    tst_bytes = encap[1].expect(0xA0, "eContent").children()[0].expect(0x04, "eContent").content
    certs: list[x509.Certificate] = []
    signer_infos = None
    for f in fields[3:]:
        if f.tag == 0xA0:
            certs = [x509.load_der_x509_certificate(c.encoded) for c in f.children() if c.tag == 0x30]
        elif f.tag == 0x31:
            signer_infos = f.children()
    if not signer_infos or len(signer_infos) != 1:
        raise IntegrityError("time-stamp token must carry exactly one signer")

    # TSTInfo: version, policy, messageImprint, serialNumber, genTime, ...
    tst = _parse(tst_bytes).expect(0x30, "TSTInfo").children()
    policy = _oid(tst[1])
    imprint = tst[2].expect(0x30, "messageImprint").children()
    alg = _oid(imprint[0].children()[0])
    if alg not in _HASHES:
        raise IntegrityError(f"time-stamp imprint uses an unsupported hash ({alg})")
    digest = hashlib.new(_HASHES[alg][1], data).digest()
    if imprint[1].expect(0x04, "hashedMessage").content != digest:
        raise IntegrityError("time-stamp token is for other data (imprint differs)")
    serial = _int(tst[3])
    gen_time = _gen_time(tst[4])
    nonce = next((_int(el) for el in tst[5:] if el.tag == 0x02), None)

    # SignerInfo: version, sid, digestAlgorithm, [0] signedAttrs, signatureAlgorithm, signature
    si = signer_infos[0].expect(0x30, "SignerInfo").children()
    sid = si[1]
    digest_oid = _oid(si[2].children()[0])
    if digest_oid not in _HASHES:
        raise IntegrityError(f"time-stamp signer uses an unsupported hash ({digest_oid})")
    hash_alg, hash_name = _HASHES[digest_oid]
    attrs_el = si[3].expect(0xA0, "signedAttrs")
    attrs: dict[str, bytes] = {}
    for attr in attrs_el.children():
        kids = attr.children()
        values = kids[1].expect(0x31, "attribute values").children()
        attrs[_oid(kids[0])] = values[0].encoded
    sig = si[5].expect(0x04, "signature").content
    if _parse(attrs.get(_OID_CONTENT_TYPE, b"\x06\x00")).content != _enc_oid(_OID_TSTINFO)[2:]:
        raise IntegrityError("time-stamp signed content type is not TSTInfo")
    md = _parse(attrs.get(_OID_MESSAGE_DIGEST, b"\x04\x00")).expect(0x04, "messageDigest").content
    if md != hashlib.new(hash_name, tst_bytes).digest():
        raise IntegrityError("time-stamp messageDigest does not match its TSTInfo")
    signed_attrs = b"\x31" + attrs_el.encoded[1:]  # signed as a SET OF, not [0] IMPLICIT

    cert = _signer_cert(certs, sid)
    _verify_sig(cert, sig, signed_attrs, hash_alg)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise IntegrityError("the TSA certificate is not for time-stamping (no extended key usage)") from exc
    if ExtendedKeyUsageOID.TIME_STAMPING not in eku:
        raise IntegrityError("the TSA certificate is not for time-stamping")
    if not cert.not_valid_before_utc <= gen_time <= cert.not_valid_after_utc:
        raise IntegrityError("the TSA certificate was not valid at the stamped time")
    if ca_pem is not None:
        _check_trust(cert, x509.load_pem_x509_certificates(ca_pem))
    return TimestampInfo(
        gen_time=gen_time,
        serial=serial,
        policy=policy,
        nonce=nonce,
        tsa_subject=cert.subject.rfc4514_string(),
    )


def _signer_cert(certs: list[x509.Certificate], sid: _Der) -> x509.Certificate:
    if sid.tag == 0x30:  # IssuerAndSerialNumber
        serial = _int(sid.children()[1])
        found = [c for c in certs if c.serial_number == serial]
    elif sid.tag == 0x80:  # [0] SubjectKeyIdentifier
        found = []
        for c in certs:
            try:
                ski = c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                continue
            if ski == sid.content:
                found.append(c)
    else:
        raise IntegrityError("time-stamp signer identifier is malformed")
    if not found:
        raise IntegrityError("time-stamp token does not carry its signer's certificate")
    return found[0]


def _check_trust(cert: x509.Certificate, anchors: list[x509.Certificate]) -> None:
    for ca in anchors:
        if ca == cert:
            return
        try:
            cert.verify_directly_issued_by(ca)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise IntegrityError("the TSA certificate is not issued by a trusted authority")
