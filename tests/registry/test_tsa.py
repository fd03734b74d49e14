"""RFC 3161 trusted time on checkpoints, against a local `openssl ts` authority on loopback."""

from __future__ import annotations

import datetime as dt
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import create_engine, text

from cli.main import _register_commands, wm
from core.errors import IntegrityError, RegistryError
from registry import Registry, generate_owner_key, verify_checkpoint
from registry.timeproof import prove_time
from registry.tsa import verify_timestamp

_register_commands()
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
          issuer_key: ec.EllipticCurvePrivateKey, tsa: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if tsa:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    else:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, obj: object) -> None:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        assert isinstance(obj, ec.EllipticCurvePrivateKey)
        path.write_bytes(obj.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


@pytest.fixture
def tsa(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A time-stamping authority made with `openssl ts -reply`, on 127.0.0.1; (url, CA file)."""
    d = tmp_path / "tsa"
    d.mkdir()
    ca_key, tsa_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("wm test CA", ca_key, None, ca_key, tsa=False)
    tsa_cert = _cert("wm test TSA", tsa_key, ca.subject, ca_key, tsa=True)
    _pem(d / "ca.crt", ca)
    _pem(d / "tsa.crt", tsa_cert)
    _pem(d / "tsa.key", tsa_key)
    (d / "serial").write_text("01\n")
    (d / "openssl.cnf").write_text(
        "[ tsa ]\ndefault_tsa = tsa1\n[ tsa1 ]\n"
        # Only the signer's certificate in the token: OpenSSL writes a SET OF several
        # certificates unsorted (not DER), which rfc3161-client's strict parser refuses.
        f"serial = {d}/serial\ncrypto_device = builtin\nsigner_cert = {d}/tsa.crt\n"
        f"signer_key = {d}/tsa.key\nsigner_digest = sha256\n"
        "default_policy = 1.2.3.4.1\ndigests = sha256, sha384, sha512\naccuracy = secs:1\n"
        "ordering = yes\ntsa_name = no\ness_cert_id_chain = no\ness_cert_id_alg = sha256\n"
    )
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                (d / "q.tsq").write_bytes(body)
                subprocess.run(
                    ["openssl", "ts", "-reply", "-config", str(d / "openssl.cnf"),
                     "-queryfile", str(d / "q.tsq"), "-out", str(d / "r.tsr")],
                    check=True, capture_output=True,
                )
                reply = (d / "r.tsr").read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tsr", d / "ca.crt"
    finally:
        server.shutdown()
        server.server_close()


def test_checkpoint_with_trusted_time(tsa: tuple[str, Path], tmp_path: Path) -> None:
    url, ca = tsa
    home, db = tmp_path / "home", f"sqlite:///{tmp_path / 'r.db'}"
    key = generate_owner_key(home, "alice", "pw")
    with Registry.open(db) as reg:
        reg.append(key, "application/vnd.wm.test+json", {"n": 1})
    runner, env = CliRunner(), {"WM_PASSPHRASE": "pw"}
    base = ["--home", str(home), "--registry", db, "audit"]
    res = runner.invoke(wm, [*base, "checkpoint", "--tsa", url], env=env)
    assert res.exit_code == 0, res.output
    assert res.stdout.split("\n")[1] == "2"
    res = runner.invoke(wm, [*base, "verify", "--tsa-ca", str(ca)])
    assert res.exit_code == 0, res.output
    assert "1 checkpoints (1 time-stamped)" in res.stdout

    with Registry.open(db) as reg:
        [cp] = reg.checkpoints()
    assert cp.tsa_token is not None
    # The token stamps the checkpoint's body (origin, size, root), whatever signatures it carries.
    body = verify_checkpoint(cp.note, "alice", key.public_key).body().encode()
    ca_pem = ca.read_bytes()
    info = verify_timestamp(cp.tsa_token, body, ca_pem=ca_pem)
    assert info.policy == "1.2.3.4.1" and "wm test TSA" in info.tsa_subject
    assert abs((info.gen_time - dt.datetime.now(dt.UTC)).total_seconds()) < 300
    # OpenSSL agrees that the stored token stamps exactly this checkpoint.
    (tmp_path / "body").write_bytes(body)
    (tmp_path / "token").write_bytes(cp.tsa_token)
    out = subprocess.run(
        ["openssl", "ts", "-verify", "-data", str(tmp_path / "body"), "-in", str(tmp_path / "token"),
         "-token_in", "-CAfile", str(ca)], capture_output=True, text=True,
    )
    assert "Verification: OK" in out.stdout, out.stderr

    with pytest.raises(IntegrityError, match="imprint differs"):
        verify_timestamp(cp.tsa_token, body + b"x", ca_pem=ca_pem)
    other_ca = _cert("other", ec.generate_private_key(ec.SECP256R1()), None,
                     ec.generate_private_key(ec.SECP256R1()), tsa=False)
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_timestamp(cp.tsa_token, body, ca_pem=other_ca.public_bytes(serialization.Encoding.PEM))
    bad = bytearray(cp.tsa_token)
    bad[-10] ^= 0x01  # inside the signature
    with pytest.raises(IntegrityError):
        verify_timestamp(bytes(bad), body, ca_pem=ca_pem)
    # The offline time proof: the token's time counts only against the pinned authority.
    proof = prove_time(cp.note, tsa_tokens=[cp.tsa_token], tsa_ca_pem=ca_pem)
    assert proof.proven and proof.times[0].kind == "rfc3161" and "wm test TSA" in proof.times[0].by
    assert proof.existed_by == info.gen_time
    unpinned = prove_time(cp.note, tsa_tokens=[cp.tsa_token])
    assert unpinned.describe() == "time: owner's word only"
    assert "1 RFC 3161 token(s): no time-stamping authority pinned" in unpinned.ignored
    with pytest.raises(IntegrityError, match="RFC 3161 token 1: time-stamp token does not verify"):
        prove_time(cp.note, tsa_tokens=[cp.tsa_token],
                   tsa_ca_pem=other_ca.public_bytes(serialization.Encoding.PEM))
    # Without a pinned authority the audit counts the token as not checked, never as proof.
    res = runner.invoke(wm, [*base, "verify"])
    assert res.exit_code == 0 and "0 time-stamped, 1 time-stamps not checked: pass --tsa-ca" in res.stdout

    # A token swapped behind the registry's back makes the audit fail, naming the checkpoint.
    engine = create_engine(db)
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER checkpoints_no_update"))
        conn.execute(text("UPDATE checkpoints SET tsa_token = :t"), {"t": bytes(bad)})
    engine.dispose()
    res = runner.invoke(wm, [*base, "verify", "--tsa-ca", str(ca)])
    assert res.exit_code == 1
    assert res.stderr.startswith("wm: audit verify: FAILED: checkpoint 1 (size 2): time-stamp token:")


def test_unreachable_authority_is_one_line(tmp_path: Path) -> None:
    home, db = tmp_path / "home", f"sqlite:///{tmp_path / 'r.db'}"
    key = generate_owner_key(home, "alice", "pw")
    with Registry.open(db) as reg, pytest.raises(RegistryError, match="is unreachable"):
        reg.checkpoint(key, tsa_url="http://127.0.0.1:1/tsr", timeout=2)
    res = CliRunner().invoke(
        wm, ["--home", str(home), "--registry", db, "audit", "checkpoint", "--tsa", "http://127.0.0.1:1/"],
        env={"WM_PASSPHRASE": "pw"},
    )
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "time-stamping authority http://127.0.0.1:1/ is unreachable" in res.stderr
