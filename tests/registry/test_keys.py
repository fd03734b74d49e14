"""Owner keys: encrypted PKCS#8 files, mode 0600, stable ids, clear passphrase errors."""

from __future__ import annotations

import hashlib
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from cli.main import _register_commands, wm
from core.errors import InputError, KeyError_
from registry.keys import (
    KEY_FILE,
    generate_owner_key,
    load_owner_key,
    load_public_key,
    read_passphrase,
    validate_owner_name,
)

_register_commands()
PASS = "correct horse battery staple"


def test_generate_writes_encrypted_key_with_mode_0600(tmp_path: Path) -> None:
    key = generate_owner_key(tmp_path / "home", "alice", PASS)
    path = tmp_path / "home" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert PASS not in text
    raw = key.public_raw()
    assert key.key_id == hashlib.sha256(raw).hexdigest()
    # OpenSSL opens it with the passphrase: it is standard PKCS#8 PBES2.
    out = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-passin", f"pass:{PASS}", "-pubout"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out == key.public_pem()


def test_key_id_is_stable_across_loads(tmp_path: Path) -> None:
    key = generate_owner_key(tmp_path, "alice", PASS)
    again = load_owner_key(tmp_path, PASS)
    assert again.key_id == key.key_id and again.name == "alice"
    name, pub = load_public_key(tmp_path)
    assert name == "alice"
    assert pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == key.public_raw()
    assert PASS not in repr(again) and "private" not in repr(again)


def test_wrong_passphrase_is_one_clear_error(tmp_path: Path) -> None:
    generate_owner_key(tmp_path, "alice", PASS)
    with pytest.raises(KeyError_) as err:
        load_owner_key(tmp_path, "wrong")
    assert str(err.value) == (
        f"cannot unlock the owner key at {tmp_path / KEY_FILE}: wrong passphrase or damaged file"
    )


def test_no_passphrase_and_no_terminal_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WM_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(KeyError_, match="WM_PASSPHRASE is not set and there is no terminal"):
        read_passphrase()


def test_prompt_confirms_new_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WM_PASSPHRASE", raising=False)
    answers = iter(["one", "two"])
    with pytest.raises(KeyError_, match="the two passphrases differ"):
        read_passphrase(confirm=True, prompt=lambda _: next(answers))
    assert read_passphrase(prompt=lambda _: "typed") == "typed"


def test_refuses_to_overwrite_and_bad_names(tmp_path: Path) -> None:
    generate_owner_key(tmp_path, "alice", PASS)
    with pytest.raises(InputError, match="an owner key already exists"):
        generate_owner_key(tmp_path, "alice", PASS)
    for bad in ["", "has space", "a+b", "-lead", "x" * 65]:
        with pytest.raises(InputError):
            validate_owner_name(bad)


def test_cli_keygen_and_wrong_passphrase(tmp_path: Path) -> None:
    runner = CliRunner()
    home = str(tmp_path / "h")
    res = runner.invoke(wm, ["--home", home, "keygen", "--name", "alice"], env={"WM_PASSPHRASE": PASS})
    assert res.exit_code == 0, res.output
    assert "key id " in res.output and PASS not in res.output
    db = f"sqlite:///{tmp_path / 'r.db'}"
    res = runner.invoke(wm, ["--home", home, "--registry", db, "audit", "checkpoint"],
                        env={"WM_PASSPHRASE": "nope"})
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
    assert res.stderr.startswith("wm: error: cannot unlock the owner key at ")
    assert "nope" not in res.output
    res = runner.invoke(wm, ["--home", home, "keygen"], env={"WM_PASSPHRASE": PASS})
    assert res.exit_code == 2 and "an owner key already exists" in res.stderr
