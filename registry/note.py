"""Signed checkpoints: C2SP ``tlog-checkpoint`` bodies in the C2SP ``signed-note`` form.

A checkpoint commits to the log's state::

    <origin>\\n<tree size, decimal>\\n<base64 root hash>\\n

and is signed as a note: the text, a blank line, then one line per signature
``— <key name> <base64(key hash[4] || Ed25519 signature[64])>``, where the key
hash is the first four bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``
(the Ed25519 signature type is ``0x01``). The signature covers the text bytes,
final newline included. Verifier keys are also written in the ``vkey`` form
``<name>+<hex key hash>+<base64(0x01 || public key)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.errors import IntegrityError
from registry.keys import OwnerKey, verify_signature

__all__ = [
    "ED25519_ALG",
    "Checkpoint",
    "note_key_hash",
    "parse_checkpoint",
    "sign_checkpoint",
    "verifier_key",
    "verify_checkpoint",
]

ED25519_ALG = 0x01
_DASH = "\u2014 "  # an em dash and a space start every signature line


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def note_key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte key hash that prefixes a signature (C2SP signed-note)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_ALG]) + _raw(public_key)).digest()[:4]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The signed-note verifier key string ``name+hash+base64(0x01||key)``."""
    blob = base64.b64encode(bytes([ED25519_ALG]) + _raw(public_key)).decode()
    return f"{name}+{note_key_hash(name, public_key).hex()}+{blob}"


@dataclass(frozen=True)
class Checkpoint:
    """A log state: the log's origin line, its size, and its RFC 6962 root hash."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        """The checkpoint text that is signed."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def sign_checkpoint(checkpoint: Checkpoint, key: OwnerKey) -> str:
    """The signed note for ``checkpoint``, signed by ``key`` under the key name ``key.name``."""
    text = checkpoint.body()
    sig = key.sign(text.encode("utf-8"))
    blob = base64.b64encode(note_key_hash(key.name, key.public_key) + sig).decode()
    return f"{text}\n{_DASH}{key.name} {blob}\n"


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise IntegrityError(f"checkpoint {what} is not valid base64") from exc


def parse_checkpoint(note: str) -> tuple[Checkpoint, str, list[tuple[str, bytes, bytes]]]:
    """Split a signed note into its checkpoint, its signed text and ``(name, key hash, sig)`` lines.

    Checks the form only, not any signature. Raises :class:`IntegrityError`.
    """
    text, sep, sigs = note.partition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise IntegrityError("checkpoint is not a signed note (no blank line before signatures)")
    text += "\n"
    lines = text.split("\n")[:-1]
    if len(lines) < 3 or not lines[0]:
        raise IntegrityError("checkpoint needs an origin, a size and a root hash line")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise IntegrityError(f"checkpoint size {size_text!r} is not a decimal number")
    root = _b64(root_text, "root hash")
    if len(root) != 32:
        raise IntegrityError(f"checkpoint root hash is {len(root)} bytes, not 32")
    signatures = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith(_DASH):
            raise IntegrityError("checkpoint signature line does not start with an em dash")
        name, _, blob_text = line[len(_DASH) :].partition(" ")
        blob = _b64(blob_text, "signature")
        if not name or len(blob) < 5:
            raise IntegrityError("checkpoint signature line is malformed")
        signatures.append((name, blob[:4], blob[4:]))
    return Checkpoint(origin=origin, size=int(size_text), root=root), text, signatures


def verify_checkpoint(
    note: str, name: str, public_key: Ed25519PublicKey, *, origin: str | None = None
) -> Checkpoint:
    """Check that ``note`` carries a valid signature by ``(name, public_key)``; its checkpoint.

    Args:
        note: the signed note text.
        name: the key name the signature line must carry.
        public_key: the signer's Ed25519 public key.
        origin: when given, the checkpoint's origin line must equal it.

    Raises:
        IntegrityError: malformed note, wrong origin, no signature by that key, or a bad one.
    """
    checkpoint, text, signatures = parse_checkpoint(note)
    if origin is not None and checkpoint.origin != origin:
        raise IntegrityError(f"checkpoint is for log {checkpoint.origin!r}, not {origin!r}")
    want = note_key_hash(name, public_key)
    mine = [sig for n, h, sig in signatures if n == name and h == want]
    if not mine:
        raise IntegrityError(f"checkpoint has no signature by {name!r}")
    for sig in mine:
        verify_signature(public_key, sig, text.encode("utf-8"), what="checkpoint")
    return checkpoint
