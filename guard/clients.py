"""API keys for the guard's clients, stored hashed: who a query came from, not who it says it is.

PRADA (Juuti et al., EuroS&P 2019) watches each client's query stream, and the
guard's records name the client of every marked answer; both are only as good
as the client's identity. A self-declared header (``X-Client-Id``) lets an
extraction attacker spread its queries over invented names. With ``wm guard
--clients FILE`` every request must carry a key from the file (``X-Api-Key:
KEY`` or ``Authorization: Bearer KEY``); the client is named by the file, and a
request with a missing or unknown key is refused (401) before it reaches the
upstream. Readiness probes (``GET /v2/health/live``, ``/v2/health/ready``,
``/ping``) need no key, so load balancers can watch the guard.

The file holds only SHA-256 hashes of the keys (keys are 32 random bytes, so a
plain hash is as strong as a slow one), JSON::

    {"type": "wm.guard-clients/v1", "clients": [{"name": "alice", "key_sha256": "<hex>"}]}

``wm guard clients add NAME --clients FILE`` draws a key, prints it once and
stores its hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError
from core.files import write_private

__all__ = ["CLIENTS_FILE_TYPE", "OPEN_PATHS", "ClientKeys", "add_client"]

CLIENTS_FILE_TYPE = "wm.guard-clients/v1"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/ping"})
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_KEY_PREFIX = "wmk_"


def _hash(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


@dataclass(frozen=True)
class ClientKeys:
    """The clients the guard admits: key hash -> client name."""

    by_hash: dict[str, str]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClientKeys:
        """Read a clients file.

        Raises:
            InputError: unreadable, malformed, or a name or hash repeated.
        """
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the clients file {path}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("type") != CLIENTS_FILE_TYPE or \
                not isinstance(doc.get("clients"), list):
            raise InputError(f"{path} is not a wm guard clients file")
        by_hash: dict[str, str] = {}
        for c in doc["clients"]:
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or \
                    not _NAME.match(c["name"]) or not isinstance(c.get("key_sha256"), str) or \
                    not _HEX.match(c["key_sha256"]):
                raise InputError(f"{path}: each client needs a name and a key_sha256 (64 hex digits)")
            if c["key_sha256"] in by_hash or c["name"] in by_hash.values():
                raise InputError(f"{path}: client {c['name']!r} or its key appears twice")
            by_hash[c["key_sha256"]] = c["name"]
        return cls(by_hash)

    def identify(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """``client:NAME`` for the request's key, or ``None`` when it has no known key."""
        for name, value in headers:
            if name == b"x-api-key":
                key = value.strip()
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                key = value[7:].strip()
            else:
                continue
            client = self.by_hash.get(_hash(key))
            if client is not None:
                return f"client:{client}"
        return None


def add_client(path: str | os.PathLike[str], name: str) -> str:
    """Draw a key for a new client ``name``, store its hash in ``path``; the key (shown once).

    Raises:
        InputError: a bad name, a name already in the file, or an unreadable file.
    """
    if not _NAME.match(name):
        raise InputError("a client name is 1 to 64 letters, digits, '.', '_', '@' or '-'")
    p = Path(path)
    if p.exists():
        known = ClientKeys.load(p)
        if name in known.by_hash.values():
            raise InputError(f"client {name!r} already has a key in {p}")
        clients = [{"name": n, "key_sha256": h} for h, n in known.by_hash.items()]
    else:
        clients = []
    key = _KEY_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    clients.append({"name": name, "key_sha256": _hash(key.encode())})
    write_private(p, (json.dumps({"type": CLIENTS_FILE_TYPE, "clients": clients}, indent=1) + "\n")
                  .encode())
    return key
