"""A C2SP tlog-witness: an HTTP service that cosigns checkpoints it has seen grow consistently.

Server (``wm witness serve``): ``POST <prefix>/add-checkpoint`` with the body
``old <size>\\n``, the consistency proof (one base64 hash a line, at most 63),
an empty line, and a checkpoint signed by a log key the witness trusts. The
witness keeps, per log origin, the last checkpoint it cosigned (in memory,
and in ``--state DIR`` when given, written atomically before it answers) and
answers per C2SP tlog-witness: 403 when no trusted log key signed the
checkpoint, 400 for a malformed request or an old size above the checkpoint's,
409 (body: the size it holds, ``text/x.tlog.size``) when the old size is not
the one it holds or a same-size checkpoint has another root (a fork), 422 when
the consistency proof fails (a rewritten log), else 200 and its cosignature
line (:mod:`registry.cosign`) with the current time. A witness cosigns
checkpoints of any origin signed by one of its configured log keys
(``--log VKEY``, the ``note key`` that ``wm keygen`` prints).

Client (:func:`request_cosignatures`, used by ``wm audit checkpoint
--witness URL``): submits with the size the witness reports, the RFC 9162
consistency proof from it, and adds the returned lines to the note.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core import merkle
from core.canonical import b64d, b64e, parse_json
from core.errors import InputError, IntegrityError, RegistryError
from core.files import write_atomic
from registry.cosign import WitnessSigner, cosign
from registry.note import ED25519_ALG, Checkpoint, note_key_hash, parse_checkpoint, verify_checkpoint

if TYPE_CHECKING:
    from registry.store import LogStore

__all__ = ["LogKey", "WitnessService", "parse_log_key", "request_cosignatures", "running_witness"]

MAX_BODY = 64 * 1024
MAX_PROOF = 63
SIZE_TYPE = "text/x.tlog.size"


@dataclass(frozen=True)
class LogKey:
    """A log's checkpoint key the witness trusts: its note key name and Ed25519 public key."""

    name: str
    public_key: Ed25519PublicKey


def parse_log_key(text: str) -> LogKey:
    """A log's signed-note verifier key ``name+hexid+base64(0x01||key)`` (``wm keygen`` prints it).

    Raises:
        InputError: not a vkey of an Ed25519 (0x01) note key, or its key id does not match.
    """
    parts = text.strip().split("+", 2)
    if len(parts) != 3 or not parts[0]:
        raise InputError("a log key is written name+keyid+base64key (the note key `wm keygen` prints)")
    try:
        raw = base64.b64decode(parts[2], validate=True)
        key_id = bytes.fromhex(parts[1])
    except (binascii.Error, ValueError) as exc:
        raise InputError("log key: its key id or key is not valid hex or base64") from exc
    if len(raw) != 33 or raw[0] != ED25519_ALG:
        raise InputError("log key is not an Ed25519 note key (type 0x01)")
    key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if note_key_hash(parts[0], key) != key_id:
        raise InputError(f"log key {parts[0]!r}: its key id does not match its key")
    return LogKey(parts[0], key)


class _RefusedError(Exception):
    def __init__(self, status: int, message: str, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body if body is not None else message + "\n"


class WitnessService:
    """The witness's state and its add-checkpoint rule, apart from HTTP."""

    def __init__(self, signer: WitnessSigner, logs: Sequence[LogKey], state_dir: Path | None = None) -> None:
        if not logs:
            raise InputError("a witness needs at least one log key to trust (--log)")
        self.signer = signer
        self.logs = tuple(logs)
        self.state_dir = state_dir
        self._lock = threading.Lock()
        self._latest: dict[str, Checkpoint] = {}
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            for path in sorted(state_dir.glob("*.json")):
                doc = parse_json(path.read_bytes(), what=str(path))
                cp = Checkpoint(doc["origin"], int(doc["size"]), b64d(doc["root"], what="root"))
                self._latest[cp.origin] = cp

    def latest(self, origin: str) -> Checkpoint | None:
        """The last checkpoint cosigned for ``origin``, if any."""
        with self._lock:
            return self._latest.get(origin)

    def add_checkpoint(self, body: bytes) -> str:
        """Check a request body and cosign; the response lines (``_RefusedError`` carries the status)."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _RefusedError(400, "the request is not UTF-8") from exc
        head, sep, note = text.partition("\n\n")
        lines = head.split("\n") if sep else []
        if not lines or not lines[0].startswith("old "):
            raise _RefusedError(400, "the request does not start with an old size line")
        old_text = lines[0][4:]
        if not old_text.isdigit() or (old_text != "0" and old_text.startswith("0")):
            raise _RefusedError(400, "the old size is not a decimal number")
        old = int(old_text)
        if len(lines) - 1 > MAX_PROOF:
            raise _RefusedError(400, "the consistency proof has more than 63 lines")
        try:
            proof = [base64.b64decode(p, validate=True) for p in lines[1:]]
            checkpoint, _, _ = parse_checkpoint(note)
        except (binascii.Error, IntegrityError) as exc:
            raise _RefusedError(400, f"the request is malformed: {exc}") from exc
        if not any(self._signed_by(note, key) for key in self.logs):
            raise _RefusedError(403, "the checkpoint is signed by no log key this witness trusts")
        if old > checkpoint.size:
            raise _RefusedError(400, "the old size is larger than the checkpoint's")
        if old == 0 and proof:
            raise _RefusedError(400, "a consistency proof from size 0 must be empty")
        with self._lock:
            latest = self._latest.get(checkpoint.origin)
            held = latest.size if latest is not None else 0
            if old != held:
                raise _RefusedError(409, f"this witness holds size {held}", body=f"{held}\n")
            if latest is not None and old == checkpoint.size and latest.root != checkpoint.root:
                raise _RefusedError(409, "same size, another root: a fork", body=f"{held}\n")
            if latest is not None and old < checkpoint.size:
                try:
                    merkle.verify_consistency(old, checkpoint.size, proof, latest.root, checkpoint.root)
                except IntegrityError as exc:
                    raise _RefusedError(422, f"the consistency proof does not verify: {exc}") from exc
            self._persist(checkpoint)
            self._latest[checkpoint.origin] = checkpoint
            return cosign(checkpoint, self.signer, int(time.time()))

    @staticmethod
    def _signed_by(note: str, key: LogKey) -> bool:
        try:
            verify_checkpoint(note, key.name, key.public_key)
        except IntegrityError:
            return False
        return True

    def _persist(self, cp: Checkpoint) -> None:
        if self.state_dir is None:
            return
        name = hashlib.sha256(cp.origin.encode()).hexdigest()[:32] + ".json"
        doc = {"origin": cp.origin, "size": cp.size, "root": b64e(cp.root)}
        write_atomic(self.state_dir / name, json.dumps(doc, sort_keys=True).encode() + b"\n")


def _handler(service: WitnessService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def do_POST(self) -> None:
            if self.path.rstrip("/").split("?")[0] != "/add-checkpoint":
                self._answer(404, "text/plain", "not found\n")
                return
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_BODY:
                self._answer(413 if length.isdigit() else 411, "text/plain", "body too large or unsized\n")
                return
            body = self.rfile.read(int(length))
            try:
                lines = service.add_checkpoint(body)
            except _RefusedError as exc:
                ctype = SIZE_TYPE if exc.status == 409 else "text/plain"
                self._answer(exc.status, ctype, exc.body)
                return
            self._answer(200, "text/plain; charset=utf-8", lines)

        def _answer(self, status: int, ctype: str, text: str) -> None:
            data = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # quiet: the CLI says what it serves
            pass

    return Handler


@contextmanager
def running_witness(service: WitnessService, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``service`` on ``host:port`` (0: the OS picks) in a thread; yields its URL."""
    server = ThreadingHTTPServer((host, port), _handler(service))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="wm-witness", daemon=True)
    thread.start()
    try:
        bound = server.server_address
        yield f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _submit(client: httpx.Client, url: str, old: int, proof: Sequence[bytes], note: str) -> httpx.Response:
    body = f"old {old}\n" + "".join(b64e(h) + "\n" for h in proof) + "\n" + note
    try:
        return client.post(url.rstrip("/") + "/add-checkpoint", content=body.encode("utf-8"))
    except httpx.HTTPError as exc:
        raise RegistryError(f"witness {url} is unreachable: {type(exc).__name__}") from exc


def request_cosignatures(
    store: LogStore, note: str, state: Checkpoint, urls: Sequence[str], *, timeout: float = 30.0
) -> str:
    """``note`` with the cosignature lines of each witness at ``urls`` added.

    Raises:
        RegistryError: a witness is unreachable, refuses, has seen a larger tree
            of this log (the log went back) or answers something that is not
            signature lines.
    """
    out = note
    with httpx.Client(timeout=httpx.Timeout(timeout)) as client:
        for url in urls:
            resp = _submit(client, url, 0, (), note)
            if resp.status_code == 409 and resp.content.strip().isdigit():
                held = int(resp.content.strip())
                if held > state.size:
                    raise RegistryError(
                        f"witness {url} has seen {held} entries of this log, more than the "
                        f"{state.size} it has now: the log went back"
                    )
                proof = store.consistency_proof(held, state.size).hashes if 0 < held < state.size else ()
                resp = _submit(client, url, held, proof, note)
            if resp.status_code != 200:
                reason = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else ""
                raise RegistryError(
                    f"witness {url} refused the checkpoint (HTTP {resp.status_code}: {reason})"
                )
            lines = resp.text
            if len(resp.content) > MAX_BODY or not lines.endswith("\n") or not all(
                line.startswith("\u2014 ") for line in lines[:-1].split("\n")
            ):
                raise RegistryError(f"witness {url} answered something other than signature lines")
            out += lines
            parse_checkpoint(out)  # the lines must keep the note well formed
    return out
