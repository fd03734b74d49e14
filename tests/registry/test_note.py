"""Signed checkpoints in the C2SP signed-note form."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import IntegrityError
from registry.keys import OwnerKey
from registry.note import (
    Checkpoint,
    note_key_hash,
    parse_checkpoint,
    sign_checkpoint,
    verifier_key,
    verify_checkpoint,
)

ROOT = hashlib.sha256(b"root").digest()


def test_note_layout(owner_key: OwnerKey) -> None:
    cp = Checkpoint("example.com/log", 42, ROOT)
    note = sign_checkpoint(cp, owner_key)
    text, blank, sig_line = note.split("\n", 3)[:3], note.split("\n")[3], note.split("\n")[4]
    assert text == ["example.com/log", "42", base64.b64encode(ROOT).decode()]
    assert blank == ""
    assert sig_line.startswith("\u2014 alice ")
    blob = base64.b64decode(sig_line.split(" ")[2])
    assert len(blob) == 4 + 64
    want = hashlib.sha256(b"alice\n\x01" + owner_key.public_raw()).digest()[:4]
    assert blob[:4] == want == note_key_hash("alice", owner_key.public_key)
    assert note.endswith("\n")
    assert verify_checkpoint(note, "alice", owner_key.public_key, origin="example.com/log") == cp
    vkey = verifier_key("alice", owner_key.public_key)
    assert vkey.split("+")[:2] == ["alice", want.hex()]
    assert base64.b64decode(vkey.split("+", 2)[2]) == b"\x01" + owner_key.public_raw()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda n: n.replace("\n42\n", "\n43\n"), "signature does not verify"),
        (lambda n: n.replace("example.com/log", "example.com/other"), "is for log"),
        (lambda n: n.replace("\u2014 alice", "\u2014 bob"), "no signature by 'alice'"),
        (lambda n: n.replace("\n\n", "\n"), "not a signed note"),
        (lambda n: n.replace("\u2014", "-"), "does not start with an em dash"),
        (lambda n: n.replace("\n42\n", "\n042\n"), "is not a decimal number"),
    ],
)
def test_tampered_notes_fail(owner_key: OwnerKey, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    note = sign_checkpoint(Checkpoint("example.com/log", 42, ROOT), owner_key)
    with pytest.raises(IntegrityError, match=message):
        verify_checkpoint(edit(note), "alice", owner_key.public_key, origin="example.com/log")


def test_other_key_fails(owner_key: OwnerKey, other_key: OwnerKey) -> None:
    note = sign_checkpoint(Checkpoint("o", 1, ROOT), owner_key)
    with pytest.raises(IntegrityError, match="no signature by 'alice'"):
        verify_checkpoint(note, "alice", other_key.public_key)


@given(st.text(max_size=200))
def test_parser_only_ever_raises_integrity_error(text: str) -> None:
    with contextlib.suppress(IntegrityError):
        parse_checkpoint(text)
