"""Witnesses (C2SP tlog-witness / tlog-cosignature) and the offline time proof, on loopback.

The witness is the real `wm witness serve` in a subprocess on port 0; the log
is a real registry; the checker side is `registry.timeproof.prove_time`, which
trusts only the witness keys it is given.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.main import _register_commands, wm
from core.errors import InputError, IntegrityError, RegistryError
from registry import OwnerKey, Registry
from registry.cosign import (
    WitnessSigner,
    cosign,
    load_witness_signer,
    parse_witness_key,
    verify_cosignatures,
)
from registry.note import Checkpoint, sign_checkpoint, verifier_key
from registry.timeproof import OWNERS_WORD_ONLY, prove_time
from registry.witness import LogKey, WitnessService, parse_log_key

_register_commands()
T = "application/vnd.wm.test+json"
ROOT = Path(__file__).resolve().parents[2]


def _service(owner: OwnerKey, state: Path | None = None) -> WitnessService:
    signer = WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate())
    return WitnessService(signer, [LogKey(owner.name, owner.public_key)], state)


def _body(old: int, proof: list[bytes], note: str) -> bytes:
    lines = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
    return (f"old {old}\n" + lines + "\n" + note).encode()


def test_cosignature_format_follows_c2sp(owner_key: OwnerKey) -> None:
    signer = WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate())
    cp = Checkpoint("example.com/log", 7, b"\x01" * 32)
    note = sign_checkpoint(cp, owner_key)
    line = cosign(cp, signer, 1679315147)
    _, blob = line[2:-1].split(" ")
    raw = base64.b64decode(blob)
    assert line.startswith("\u2014 witness.example/w1 ") and len(raw) == 4 + 8 + 64
    assert raw[4:12] == (1679315147).to_bytes(8, "big")
    msg = b"cosignature/v1\ntime 1679315147\n" + cp.body().encode()
    signer.private_key.public_key().verify(raw[12:], msg)
    key = parse_witness_key(signer.public.vkey())
    assert key.name == "witness.example/w1" and raw[:4] == key.key_id
    [c] = verify_cosignatures(note + line, [key])
    assert (c.witness, c.timestamp) == ("witness.example/w1", 1679315147)
    assert verify_cosignatures(note + line, []) == []  # unknown keys are ignored
    forged = note + line.replace(blob, base64.b64encode(raw[:12] + bytes(64)).decode())
    with pytest.raises(IntegrityError, match=r"cosignature by witness 'witness\.example/w1' does not verify"):
        verify_cosignatures(forged, [key])
    with pytest.raises(InputError, match="not an Ed25519 cosignature"):
        parse_witness_key(verifier_key("x", owner_key.public_key))


def test_witness_refuses_rollback_fork_and_strangers(owner_key: OwnerKey, other_key: OwnerKey,
                                                    tmp_path: Path) -> None:
    from registry.witness import _RefusedError

    state = tmp_path / "state"
    svc = _service(owner_key, state)
    leaves = [bytes([i]) * 32 for i in range(8)]
    from core import merkle

    def note(n: int, key: OwnerKey = owner_key, extra: bytes = b"") -> tuple[str, Checkpoint]:
        hashes = [merkle.leaf_hash(x) for x in leaves[:n]] + ([merkle.leaf_hash(extra)] if extra else [])
        cp = Checkpoint("wm.registry/test", len(hashes), merkle.root_from_hashes(hashes))
        return sign_checkpoint(cp, key), cp

    def refused(body: bytes) -> int:
        with pytest.raises(_RefusedError) as err:
            svc.add_checkpoint(body)
        return err.value.status

    n3, _ = note(3)
    assert svc.add_checkpoint(_body(0, [], n3)).startswith("\u2014 witness.example/w1 ")
    assert refused(_body(0, [], n3)) == 409  # it holds 3 now
    assert refused(_body(0, [], note(3, other_key)[0])) == 403  # a log key it does not trust
    assert refused(_body(3, [], note(2, extra=b"fork")[0])) == 409  # same size, another root
    n6, cp6 = note(6)
    hashes = [merkle.leaf_hash(x) for x in leaves[:6]]
    good = merkle.consistency_proof(hashes, 3)
    assert refused(_body(3, [b"\x00" * 32] * len(good), n6)) == 422  # a rewritten log
    assert refused(_body(7, [], n6)) == 400  # old size above the checkpoint's
    svc.add_checkpoint(_body(3, good, n6))
    assert refused(_body(6, [], note(5, extra=b"fork")[0])) == 409  # a fork at the size it holds
    assert refused(_body(6, [], note(5)[0])) == 400  # a rollback to a smaller tree
    assert refused(_body(5, [], note(5)[0])) == 409
    assert refused(_body(6, [], n6.replace("\n6\n", "\n7\n"))) == 403  # the signature no longer holds
    # The state survives a restart (written before answering).
    assert WitnessService(svc.signer, svc.logs, state).latest("wm.registry/test") == cp6


@pytest.fixture
def witness_cli(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str], str, OwnerKey]]:
    """`wm witness keygen` and `wm witness serve` on port 0 for a new owner; (key, proc, URL, owner)."""
    from registry import generate_owner_key

    home = tmp_path / "home"
    owner = generate_owner_key(home, "alice", "pw", kdf_rounds=1000)
    key_file = tmp_path / "w.key"
    res = CliRunner().invoke(wm, ["witness", "keygen", "--out", str(key_file), "--name", "w.example/1"])
    assert res.exit_code == 0, res.output
    assert (key_file.stat().st_mode & 0o777) == 0o600 and Path(f"{key_file}.pub").is_file()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "witness", "serve", "--key", str(key_file), "--port", "0",
         "--state", str(tmp_path / "wstate"), "--log", verifier_key("alice", owner.public_key)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WM_HOME": str(home)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("witness w.example/1 listening on http://127.0.0.1:"), proc.stderr.read()
        yield key_file, proc, line.split(" on ")[1].split(" ")[0], owner
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_wm_witness_serve_cosigns_and_the_time_is_proven(witness_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key_file, _, url, owner = witness_cli
    home = tmp_path / "home"
    db = f"sqlite:///{tmp_path / 'r.db'}"
    base = ["--home", str(home), "--registry", db]
    with Registry.open(db) as reg:
        reg.append(owner, T, {"n": 1})
    runner, env = CliRunner(), {"WM_PASSPHRASE": "pw"}
    before = int(time.time())
    out = tmp_path / "cp1.note"
    res = runner.invoke(wm, [*base, "audit", "checkpoint", "--witness", url, "--out", str(out)], env=env)
    assert res.exit_code == 0, res.output
    assert out.read_text() == res.stdout and "\u2014 w.example/1 " in res.stdout
    pinned = parse_witness_key(Path(f"{key_file}.pub").read_text())
    proof = prove_time(out.read_text(), witness_keys=[pinned])
    assert proof.proven and proof.existed_by is not None
    assert before - 1 <= proof.existed_by.timestamp() <= time.time() + 1
    assert proof.describe().startswith("time: existed by ") and "witness w.example/1" in proof.describe()
    # Nobody pinned, or only a stranger: the owner's word only.
    stranger = WitnessSigner("w.example/1", Ed25519PrivateKey.generate()).public
    for keys in ([], [stranger]):
        assert prove_time(out.read_text(), witness_keys=keys).describe() == OWNERS_WORD_ONLY
    # The log grows: the witness gets a consistency proof from the size it holds.
    with Registry.open(db) as reg:
        for n in range(2, 9):
            reg.append(owner, T, {"n": n})
        cp = reg.checkpoint(owner, witnesses=[url])
        assert prove_time(cp.note, witness_keys=[pinned]).proven
        assert reg.checkpoints()[-1].note == cp.note
        reg.verify_log(since=out.read_text())
    assert load_witness_signer(key_file).public == pinned


def test_witness_refuses_a_log_that_went_back(witness_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A rewritten log (a fork of the one the witness saw) gets no cosignature."""
    _, _, url, owner = witness_cli
    first, second = (f"sqlite:///{tmp_path / n}" for n in ("a.db", "b.db"))
    with Registry.open(first) as a:
        for n in range(4):
            a.append(owner, T, {"n": n})
        a.checkpoint(owner, witnesses=[url])
        origin = a.origin
    # The owner rebuilds the log under the same origin with other entries.
    with Registry.open(second) as b:
        from sqlalchemy import text

        with b._writing() as s:
            s.execute(text("UPDATE log_head SET origin = :o"), {"o": origin})
        b.origin = origin
        for n in range(6):
            b.append(owner, T, {"n": -n})
        with pytest.raises(RegistryError, match=r"refused the checkpoint \(HTTP 422"):
            b.checkpoint(owner, witnesses=[url])
    with Registry.open(first) as a, pytest.raises(RegistryError, match="is unreachable"):
        a.checkpoint(owner, witnesses=["http://127.0.0.1:1"], timeout=2)
    assert httpx.get(url + "/add-checkpoint").status_code == 501  # only POST is served


def test_parse_log_key_round_trip(owner_key: OwnerKey) -> None:
    key = parse_log_key(verifier_key("alice", owner_key.public_key))
    assert key.name == "alice"
    with pytest.raises(InputError, match="its key id does not match"):
        parse_log_key(verifier_key("bob", owner_key.public_key).replace("bob+", "alice+"))
