"""Minimal DER encoding (ITU-T X.690) for the few ASN.1 structures wm writes itself.

Used for RFC 3161 time-stamp requests and RFC 8018 PBES2 parameters of the
encrypted PKCS#8 owner key.
"""

from __future__ import annotations

__all__ = ["enc_int", "enc_octets", "enc_oid", "enc_seq", "tlv"]


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length, content."""
    return bytes([tag]) + _len(len(content)) + content


def enc_oid(oid: str) -> bytes:
    """A DER OBJECT IDENTIFIER from its dotted form."""
    nums = [int(x) for x in oid.split(".")]
    out = bytearray([40 * nums[0] + nums[1]])
    for n in nums[2:]:
        chunk = [n & 0x7F]
        n >>= 7
        while n:
            chunk.append(0x80 | (n & 0x7F))
            n >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def enc_int(n: int) -> bytes:
    """A DER INTEGER (two's complement, minimal length)."""
    raw = n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)
    return tlv(0x02, raw)


def enc_seq(*items: bytes) -> bytes:
    """A DER SEQUENCE of already encoded items."""
    return tlv(0x30, b"".join(items))


def enc_octets(data: bytes) -> bytes:
    """A DER OCTET STRING."""
    return tlv(0x04, data)
