"""Owner keys: Ed25519 signing keys kept in ``$WM_HOME``, the private part encrypted.

Files (see DESIGN.md, "Registry"):

- ``owner.key``: the private key as PKCS#8 PEM (RFC 5958), encrypted with a
  passphrase (PBES2, RFC 8018: PBKDF2-HMAC-SHA256, 600,000 rounds, AES-256-CBC),
  file mode 0600;
- ``owner.pub``: the public key as SubjectPublicKeyInfo PEM (RFC 8410);
- ``owner.json``: ``{"type": "wm.owner-key/v1", "name", "key_id"}``.

The **key id** is the lowercase hex SHA-256 of the raw 32-byte public key
(RFC 8032 encoding): stable across machines and file formats. The passphrase
comes from ``$WM_PASSPHRASE`` or, on a terminal, a prompt. The private key also
derives (HKDF-SHA256, RFC 5869) the data key that seals the owner's secrets in
the registry (:mod:`registry.sealing`), so only the passphrase holder can
decrypt them.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.padding import PKCS7

from core.canonical import b64e, canonical_json, parse_json
from core.errors import InputError, IntegrityError, KeyError_
from core.files import write_atomic, write_private
from registry._der import enc_int, enc_octets, enc_oid, enc_seq

__all__ = [
    "KEY_FILE",
    "META_FILE",
    "PASSPHRASE_ENV",
    "PUBLIC_FILE",
    "OwnerKey",
    "generate_owner_key",
    "key_id_of",
    "load_owner_key",
    "load_public_key",
    "public_key_from_pem",
    "read_passphrase",
    "validate_owner_name",
    "verify_signature",
]

KEY_FILE = "owner.key"
PUBLIC_FILE = "owner.pub"
META_FILE = "owner.json"
PASSPHRASE_ENV = "WM_PASSPHRASE"
# PBKDF2-HMAC-SHA256 iterations guarding the private key (OWASP 2023 guidance: 600,000).
KDF_ROUNDS = 600_000
_META_TYPE = "wm.owner-key/v1"
# A signed-note key name: no whitespace, no '+' (C2SP signed-note), kept short and printable.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:/-]{0,63}$")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The stable key id: hex SHA-256 of the raw 32-byte Ed25519 public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def validate_owner_name(name: str) -> str:
    """Return ``name`` if it can name an owner (and a signed-note key), else :class:`InputError`."""
    if not _NAME_RE.match(name):
        raise InputError(
            f"owner name {name!r} is not usable: use 1 to 64 letters, digits or ._@:/- "
            "starting with a letter or digit"
        )
    return name


def public_key_from_pem(pem: str | bytes) -> Ed25519PublicKey:
    """Parse an Ed25519 SubjectPublicKeyInfo PEM; :class:`InputError` if it is not one."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InputError("not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InputError("public key is not an Ed25519 key")
    return key


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, data: bytes, *, what: str) -> None:
    """Raise :class:`IntegrityError` naming ``what`` unless ``signature`` is valid over ``data``."""
    try:
        public_key.verify(signature, data)
    except InvalidSignature as exc:
        raise IntegrityError(f"{what}: signature does not verify") from exc


@dataclass(frozen=True, eq=False)
class OwnerKey:
    """An owner's Ed25519 key pair, unlocked.

    Attributes:
        name: the owner's name (also the key name in signed checkpoints).
        private_key: the Ed25519 private key; never logged or printed.
    """

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half."""
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the raw public key."""
        return key_id_of(self.public_key)

    def public_raw(self) -> bytes:
        """The raw 32-byte public key (RFC 8032)."""
        return self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def public_pem(self) -> str:
        """The public key as SubjectPublicKeyInfo PEM text."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over ``data``."""
        return self.private_key.sign(data)

    def derive_key(self, info: bytes, length: int = 32) -> bytes:
        """A symmetric key derived from the private key with HKDF-SHA256 (RFC 5869).

        Args:
            info: what the key is for; different ``info`` gives independent keys.
            length: key length in bytes.
        """
        raw = self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=b"wm.owner-key/v1", info=info).derive(raw)

    def __repr__(self) -> str:
        return f"OwnerKey(name={self.name!r}, key_id={self.key_id[:16]}...)"


Prompt = Callable[[str], str]


def read_passphrase(*, confirm: bool = False, prompt: Prompt | None = None) -> str:
    """The passphrase: ``$WM_PASSPHRASE``, else asked on the terminal.

    Args:
        confirm: ask twice (when creating a key) and insist both agree.
        prompt: how to ask; default :func:`getpass.getpass`, only when stdin is a terminal.

    Raises:
        KeyError_: no ``$WM_PASSPHRASE`` and no terminal, or an empty or mismatched passphrase.
    """
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        if not env:
            raise KeyError_(f"{PASSPHRASE_ENV} is set but empty", hint="set it to the passphrase")
        return env
    if prompt is None:
        if not sys.stdin.isatty():
            raise KeyError_(
                "no passphrase for the owner key: WM_PASSPHRASE is not set and there is "
                "no terminal to ask on",
                hint="set WM_PASSPHRASE",
            )
        prompt = getpass.getpass
    first = prompt("Owner key passphrase: ")
    if not first:
        raise KeyError_("the passphrase must not be empty")
    if confirm and prompt("Repeat passphrase: ") != first:
        raise KeyError_("the two passphrases differ")
    return first


def encrypt_pkcs8(private: Ed25519PrivateKey, passphrase: str, *, rounds: int = KDF_ROUNDS) -> bytes:
    """PEM ``ENCRYPTED PRIVATE KEY`` (RFC 5958) under PBES2 (RFC 8018 section 6.2).

    PBKDF2-HMAC-SHA256 with a 16-byte random salt and ``rounds`` iterations
    derives an AES-256-CBC key. Written here because ``cryptography``'s
    ``BestAvailableEncryption`` for PKCS#8 uses a low iteration count; any
    PKCS#8 reader (OpenSSL, ``cryptography``) opens the result.
    """
    plain = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    salt, iv = os.urandom(16), os.urandom(16)
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=rounds)
    key = kdf.derive(passphrase.encode("utf-8"))
    padder = PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(padded) + enc.finalize()
    pbkdf2 = enc_seq(
        enc_oid("1.2.840.113549.1.5.12"),  # id-PBKDF2
        enc_seq(
            enc_octets(salt),
            enc_int(rounds),
            enc_int(32),
            enc_seq(enc_oid("1.2.840.113549.2.9"), b"\x05\x00"),  # hmacWithSHA256
        ),
    )
    aes = enc_seq(enc_oid("2.16.840.1.101.3.4.1.42"), enc_octets(iv))  # aes256-CBC
    pbes2 = enc_seq(enc_oid("1.2.840.113549.1.5.13"), enc_seq(pbkdf2, aes))  # id-PBES2
    der = enc_seq(pbes2, enc_octets(ciphertext))
    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    text = "-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + "\n".join(lines)
    return (text + "\n-----END ENCRYPTED PRIVATE KEY-----\n").encode("ascii")


def generate_owner_key(
    home: Path, name: str, passphrase: str | None = None, *, kdf_rounds: int = KDF_ROUNDS
) -> OwnerKey:
    """Create a new owner key in ``home``; refuses to overwrite an existing one.

    Args:
        home: the wm home directory (created with mode 0700 if missing).
        name: the owner's name (see :func:`validate_owner_name`).
        passphrase: encrypts the private key; default from :func:`read_passphrase`.
        kdf_rounds: PBKDF2 iterations; lower it only for throw-away keys (tests).

    Raises:
        InputError: a key already exists there, or the name is unusable.
        KeyError_: no passphrase can be had.
    """
    validate_owner_name(name)
    home = Path(home)
    key_path = home / KEY_FILE
    if key_path.exists():
        raise InputError(
            f"an owner key already exists at {key_path}",
            hint="move it away first if you really want a new one",
        )
    if passphrase is None:
        passphrase = read_passphrase(confirm=True)
    if not passphrase:
        raise KeyError_("the passphrase must not be empty")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    key = OwnerKey(name=name, private_key=private)
    pem = encrypt_pkcs8(private, passphrase, rounds=kdf_rounds)
    write_private(key_path, pem)
    write_atomic(home / PUBLIC_FILE, key.public_pem().encode("ascii"))
    meta = {"type": _META_TYPE, "name": name, "key_id": key.key_id}
    write_atomic(home / META_FILE, canonical_json(meta) + b"\n")
    return key


def _read_meta(home: Path) -> dict[str, str]:
    path = home / META_FILE
    try:
        meta = parse_json(path.read_bytes(), what=str(path))
    except OSError as exc:
        raise KeyError_(f"cannot read {path}: {exc.strerror}", hint="run `wm keygen`") from exc
    if not isinstance(meta, dict) or meta.get("type") != _META_TYPE or not isinstance(meta.get("name"), str):
        raise KeyError_(f"{path} is not a wm owner key description")
    return meta


def load_public_key(home: Path) -> tuple[str, Ed25519PublicKey]:
    """The owner's name and public key from ``home``, without any passphrase."""
    home = Path(home)
    meta = _read_meta(home)
    try:
        pem = (home / PUBLIC_FILE).read_bytes()
    except OSError as exc:
        raise KeyError_(f"cannot read {home / PUBLIC_FILE}: {exc.strerror}") from exc
    return meta["name"], public_key_from_pem(pem)


def load_owner_key(home: Path, passphrase: str | None = None, *, prompt: Prompt | None = None) -> OwnerKey:
    """Unlock the owner key in ``home``.

    Args:
        home: the wm home directory.
        passphrase: default from :func:`read_passphrase` (``$WM_PASSPHRASE`` or a prompt).
        prompt: passed to :func:`read_passphrase`.

    Raises:
        KeyError_: no key there, a wrong passphrase, or files that do not belong together.
    """
    home = Path(home)
    key_path = home / KEY_FILE
    if not key_path.is_file():
        raise KeyError_(f"no owner key at {key_path}", hint="run `wm keygen` first")
    meta = _read_meta(home)
    if passphrase is None:
        passphrase = read_passphrase(prompt=prompt)
    data = key_path.read_bytes()
    try:
        private = serialization.load_pem_private_key(data, password=passphrase.encode("utf-8"))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # cryptography says "Bad decrypt. Incorrect password?" (ValueError) for a wrong one.
        raise KeyError_(
            f"cannot unlock the owner key at {key_path}: wrong passphrase or damaged file",
            hint=f"check {PASSPHRASE_ENV}",
        ) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyError_(f"{key_path} does not hold an Ed25519 key")
    key = OwnerKey(name=meta["name"], private_key=private)
    if meta.get("key_id") not in (None, key.key_id):
        raise KeyError_(f"{home / META_FILE} names another key than {key_path}")
    return key


def describe(key: OwnerKey) -> dict[str, str]:
    """Public description of a key: name, key id, public key (PEM and raw base64)."""
    return {"name": key.name, "key_id": key.key_id, "public_key": b64e(key.public_raw())}
