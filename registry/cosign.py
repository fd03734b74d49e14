"""Witness cosignatures on checkpoints: C2SP tlog-cosignature v1 (Ed25519), and witness keys.

A cosignature is a signed-note signature line on a checkpoint::

    — <witness name> base64(key id[4] || timestamp[8, big-endian] || Ed25519 signature[64])

where the key id is ``SHA-256(name || 0x0A || 0x04 || public key)[:4]`` and the
signature covers ``"cosignature/v1\\ntime <timestamp>\\n" || checkpoint body``.
It states that, at that POSIX time, the largest consistent tree the witness
had seen for the log's origin was this one: so the checkpoint existed then.

Witness keys are written as signed-note keys: the verifier key (``vkey``)
``<name>+<hex key id>+base64(0x04 || public key)`` and the private key
``PRIVATE+KEY+<name>+<hex key id>+base64(0x04 || 32-byte seed)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import InputError, IntegrityError
from core.files import write_atomic, write_private
from registry.note import Checkpoint, parse_checkpoint

__all__ = [
    "COSIGNATURE_ALG",
    "Cosignature",
    "WitnessKey",
    "WitnessSigner",
    "cosign",
    "generate_witness_key",
    "load_witness_signer",
    "parse_witness_key",
    "verify_cosignatures",
]

COSIGNATURE_ALG = 0x04
_DASH = "\u2014 "
_MAX_TIME = 2**63 - 1


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_ALG]) + _raw(public_key)).digest()[:4]


def _check_name(name: str) -> str:
    if not name or any(c.isspace() for c in name) or "+" in name or not name.isprintable():
        raise InputError(f"witness name {name!r} must be non-empty, without spaces or '+'")
    return name


def _message(checkpoint: Checkpoint, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint.body()}".encode()


@dataclass(frozen=True)
class WitnessKey:
    """A witness's public key and name, as a checker pins it."""

    name: str
    public_key: Ed25519PublicKey = field(compare=False)

    @property
    def key_id(self) -> bytes:
        """The 4-byte signed-note key id (cosignature type 0x04)."""
        return _key_id(self.name, self.public_key)

    def vkey(self) -> str:
        """The signed-note verifier key ``name+hexid+base64(0x04||key)``."""
        blob = base64.b64encode(bytes([COSIGNATURE_ALG]) + _raw(self.public_key)).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"


@dataclass(frozen=True, eq=False)
class WitnessSigner:
    """A witness's private key and name (``wm witness serve`` holds one)."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)

    @property
    def public(self) -> WitnessKey:
        """The public half, for checkers to pin."""
        return WitnessKey(self.name, self.private_key.public_key())


def cosign(checkpoint: Checkpoint, signer: WitnessSigner, timestamp: int) -> str:
    """The cosignature line (with its newline) of ``signer`` on ``checkpoint`` at POSIX ``timestamp``."""
    if not 0 <= timestamp <= _MAX_TIME:
        raise InputError("a cosignature time must be a POSIX time below 2**63")
    sig = signer.private_key.sign(_message(checkpoint, timestamp))
    blob = signer.public.key_id + struct.pack(">Q", timestamp) + sig
    return f"{_DASH}{signer.name} {base64.b64encode(blob).decode()}\n"


@dataclass(frozen=True)
class Cosignature:
    """A verified cosignature: which pinned witness, at which POSIX time."""

    witness: str
    timestamp: int


def verify_cosignatures(note: str, keys: list[WitnessKey] | tuple[WitnessKey, ...]) -> list[Cosignature]:
    """The valid cosignatures on ``note`` by the pinned ``keys`` (lines by other keys are ignored).

    Raises:
        IntegrityError: the note is malformed, or a line by a pinned key (same
            name and key id) does not verify: the whole note is then rejected,
            as C2SP signed-note asks.
    """
    checkpoint, _, lines = parse_checkpoint(note)
    found: list[Cosignature] = []
    for key in keys:
        for name, key_id, blob in lines:
            if name != key.name or key_id != key.key_id:
                continue
            if len(blob) != 8 + 64:
                raise IntegrityError(f"cosignature by witness {name!r} is malformed")
            (timestamp,) = struct.unpack(">Q", blob[:8])
            if timestamp > _MAX_TIME:
                raise IntegrityError(f"cosignature by witness {name!r} has an impossible time")
            try:
                key.public_key.verify(blob[8:], _message(checkpoint, timestamp))
            except InvalidSignature as exc:
                raise IntegrityError(f"cosignature by witness {name!r} does not verify") from exc
            found.append(Cosignature(name, timestamp))
    return found


def parse_witness_key(text: str) -> WitnessKey:
    """A witness's verifier key from its ``vkey`` text (``name+hexid+base64(0x04||key)``).

    Raises:
        InputError: not a vkey, not a cosignature (0x04) key, or a key id that does not match.
    """
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise InputError("a witness key is written name+keyid+base64key (as `wm witness keygen` writes it)")
    name, hexid, b64 = parts
    try:
        raw = base64.b64decode(b64, validate=True)
        key_id = bytes.fromhex(hexid)
    except (binascii.Error, ValueError) as exc:
        raise InputError("witness key: its key id or key is not valid hex or base64") from exc
    if len(raw) != 33 or raw[0] != COSIGNATURE_ALG:
        raise InputError("witness key is not an Ed25519 cosignature (type 0x04) key")
    key = WitnessKey(_check_name(name), Ed25519PublicKey.from_public_bytes(raw[1:]))
    if key.key_id != key_id:
        raise InputError(f"witness key {name!r}: its key id does not match its key")
    return key


def generate_witness_key(path: str | Path, name: str) -> WitnessSigner:
    """Write a new witness key to ``path`` (0600) and its verifier key to ``path.pub``.

    Raises:
        InputError: ``path`` exists already, or the name is unusable.
    """
    p = Path(path)
    if p.exists():
        raise InputError(f"a file exists at {p}", hint="move it away first if you really want a new key")
    signer = WitnessSigner(_check_name(name), Ed25519PrivateKey.generate())
    seed = signer.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    blob = base64.b64encode(bytes([COSIGNATURE_ALG]) + seed).decode()
    write_private(p, f"PRIVATE+KEY+{name}+{signer.public.key_id.hex()}+{blob}\n".encode())
    write_atomic(p.with_name(p.name + ".pub"), (signer.public.vkey() + "\n").encode())
    return signer


def load_witness_signer(path: str | Path) -> WitnessSigner:
    """Read a witness key written by :func:`generate_witness_key`.

    Raises:
        InputError: unreadable or malformed (the message never quotes the key).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read witness key {p}") from exc
    parts = text.split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise InputError(f"{p} is not a witness private key (PRIVATE+KEY+name+id+key)")
    try:
        raw = base64.b64decode(parts[4], validate=True)
    except binascii.Error as exc:
        raise InputError(f"witness key {p} is malformed") from exc
    if len(raw) != 33 or raw[0] != COSIGNATURE_ALG:
        raise InputError(f"witness key {p} is not an Ed25519 cosignature key")
    signer = WitnessSigner(_check_name(parts[2]), Ed25519PrivateKey.from_private_bytes(raw[1:]))
    if signer.public.key_id.hex() != parts[3]:
        raise InputError(f"witness key {p}: its key id does not match its key")
    return signer
