"""`wm register` and `wm audit` end to end, with a real .pt2 and a watermark sidecar."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import _register_commands, wm
from core.canonical import b64e, canonical_json
from core.modelio import save_model
from registry import PROBESET_TYPE, Registry, load_owner_key
from tests.registry.conftest import make_probeset

_register_commands()
ENV = {"WM_PASSPHRASE": "pw"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from core.arch import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m.pt2"
    save_model(build_model("mlp", (1, 8, 8), 10), path, input_shape=(1, 8, 8), num_classes=10,
               arch="mlp")
    return path


def test_register_audit_and_proof(model_file: Path, tmp_path: Path, db_url: str) -> None:
    runner = CliRunner()
    home = tmp_path / "home"
    base = ["--home", str(home), "--registry", db_url]
    res = runner.invoke(wm, [*base, "keygen", "--name", "alice"], env=ENV)
    assert res.exit_code == 0, res.output
    assert f"public key (publish it) written to {home / 'owner.pub'}" in res.stdout
    kid = res.stdout.split("key id ")[1].split()[0]
    note_key = res.stdout.split("note key ")[1].strip()
    assert kid == load_owner_key(home, "pw").key_id and note_key.startswith("alice+")
    assert (home / "owner.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    model = tmp_path / "m.pt2"
    model.write_bytes(model_file.read_bytes())
    ps = make_probeset(6)
    wm_key = os.urandom(32)
    sidecar = Path(str(model) + ".wmkey")
    sidecar.write_bytes(canonical_json({"type": "wm.watermark-secret/v1", "key": b64e(wm_key),
                                        "probeset": b64e(ps.to_bytes()), "scheme": ps.scheme}))
    res = runner.invoke(wm, [*base, "register", str(model), "--name", "digits"], env=ENV)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("registered digits: log entry 1, file sha256 ")
    assert "watermark committed: probe set 2" in res.stdout
    res = runner.invoke(wm, [*base, "register", str(model), "--name", "digits"], env=ENV)
    assert res.exit_code == 2
    assert res.stderr == "wm: error: a model named 'digits' is already registered (log entry 1)\n"

    with Registry.open(db_url) as reg:
        info = reg.model("digits")
        assert (info.arch, info.input_shape, info.num_classes) == ("mlp", (1, 8, 8), 10)
        assert info.weights_sha256 is not None
        [mark] = reg.probesets("digits", kind="watermark")
        assert mark.root == ps.root and mark.size == 6
        key = load_owner_key(home, "pw")
        assert reg.load_secret_key(mark.id, key) == wm_key

    res = runner.invoke(wm, [*base, "audit", "log", "--json"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["size"] == 3 and [e["index"] for e in doc["entries"]] == [0, 1, 2]
    assert doc["entries"][2]["payload_type"] == PROBESET_TYPE
    # Nothing secret in the public log: not the watermark key, not a salt.
    for secret in (wm_key, ps.salts[0]):
        assert b64e(secret) not in res.stdout and secret.hex() not in res.stdout
    text_log = runner.invoke(wm, [*base, "audit", "log"]).stdout
    assert "watermark for digits: trigger-set:n=6:pattern=noise n=6" in text_log

    assert runner.invoke(wm, [*base, "audit", "proof", "1"]).exit_code == 2  # no checkpoint yet
    res = runner.invoke(wm, [*base, "audit", "checkpoint"], env=ENV)
    assert res.exit_code == 0 and res.stdout.split("\n")[1] == "3"
    res = runner.invoke(wm, [*base, "audit", "proof", "1"])
    assert res.exit_code == 0
    proof = tmp_path / "proof.json"
    proof.write_text(res.stdout)
    res = runner.invoke(wm, ["audit", "check-proof", str(proof)])
    assert res.exit_code == 2 and res.stderr == (
        "wm: error: no owner key pinned: pass --owner-key with the owner's published owner.pub "
        "(or its key id)\n")
    for pin in (key.key_id, str(home / "owner.pub")):
        res = runner.invoke(wm, ["audit", "check-proof", str(proof), "--owner-key", pin])
        assert res.exit_code == 0, res.output
        assert res.stdout.startswith("ok: entry 1 is in wm.registry/") and "pinned owner key" in res.stdout
        assert "probe sets in the log at that checkpoint: 1" in res.stdout
    res = runner.invoke(wm, ["audit", "check-proof", str(proof), "--trust-embedded-key"])
    assert res.exit_code == 0 and "UNTRUSTED" in res.stdout and "warning" in res.stderr
    bundle = json.loads(proof.read_text())
    bundle["inclusion"]["hashes"][0] = b64e(b"\x00" * 32)
    proof.write_text(json.dumps(bundle))
    res = runner.invoke(wm, ["audit", "check-proof", str(proof), "--owner-key", key.key_id])
    assert res.exit_code == 1
    assert res.stderr == ("wm: audit check-proof: FAILED: "
                          "inclusion proof does not lead to the root hash\n")
    res = runner.invoke(wm, [*base, "audit", "verify"])
    assert res.exit_code == 0 and res.stdout.startswith("ok: 3 entries, root ")


def test_audit_on_missing_registry_is_exit_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(wm, ["--registry", f"sqlite:///{tmp_path}/none.db", "audit", "verify"])
    assert res.exit_code == 2
    assert res.stderr.startswith("wm: error: no registry at ")
