"""DSSE envelopes: PAE bytes, signing over canonical JSON, and every kind of tampering."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.canonical import b64d, b64e, canonical_json
from core.errors import IntegrityError
from registry.dsse import pae, payload_of, sign_envelope, verify_envelope
from registry.keys import OwnerKey

T = "application/vnd.wm.test+json"


def test_pae_matches_the_dsse_specification() -> None:
    # The worked example of the DSSE v1 protocol document.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    # LEN is the byte length, not the character count.
    assert pae("t\u00e9", b"\xff") == b"DSSEv1 3 t\xc3\xa9 1 \xff"


def test_sign_and_verify_round_trip(owner_key: OwnerKey) -> None:
    env = sign_envelope(owner_key, T, {"b": 1, "a": [1, 2]})
    assert set(env) == {"payloadType", "payload", "signatures"}
    assert b64d(env["payload"]) == b'{"a":[1,2],"b":1}'
    assert env["signatures"][0]["keyid"] == owner_key.key_id
    assert verify_envelope(env, owner_key.public_key, payload_type=T) == {"a": [1, 2], "b": 1}


def _mutations(env: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    out = []
    e = copy.deepcopy(env)
    e["payloadType"] = T + "x"
    out.append(("type", e, "signature does not verify"))
    e = copy.deepcopy(env)
    e["payload"] = b64e(b64d(e["payload"]).replace(b"1", b"2"))
    out.append(("payload", e, "signature does not verify"))
    e = copy.deepcopy(env)
    sig = bytearray(b64d(e["signatures"][0]["sig"]))
    sig[0] ^= 1
    e["signatures"][0]["sig"] = b64e(bytes(sig))
    out.append(("sig", e, "signature does not verify"))
    e = copy.deepcopy(env)
    e["signatures"] = []
    out.append(("nosig", e, "envelope carries no signature"))
    e = copy.deepcopy(env)
    e["payload"] = "***"
    out.append(("b64", e, "envelope payload is not valid base64"))
    return out


def test_tampering_fails(owner_key: OwnerKey, other_key: OwnerKey) -> None:
    env = sign_envelope(owner_key, T, {"n": 1})
    for _, bad, message in _mutations(env):
        with pytest.raises(IntegrityError, match=message):
            verify_envelope(bad, owner_key.public_key)
    with pytest.raises(IntegrityError, match="envelope has no signature by key"):
        verify_envelope(env, other_key.public_key)
    with pytest.raises(IntegrityError, match="expected 'other'"):
        verify_envelope(env, owner_key.public_key, payload_type="other")


def test_non_canonical_payload_is_refused(owner_key: OwnerKey) -> None:
    body = b'{"b":1, "a":2}'
    env = {
        "payloadType": T,
        "payload": b64e(body),
        "signatures": [{"keyid": owner_key.key_id, "sig": b64e(owner_key.sign(pae(T, body)))}],
    }
    with pytest.raises(IntegrityError, match="not RFC 8785 canonical JSON"):
        verify_envelope(env, owner_key.public_key)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.integers(0, 10**6))
def test_any_payload_round_trips_and_any_byte_flip_fails(
    payload: dict[str, Any], pick: int
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = OwnerKey(name="k", private_key=Ed25519PrivateKey.generate())
    env = sign_envelope(key, T, payload)
    assert verify_envelope(env, key.public_key) == payload
    assert payload_of(env) == payload
    body = bytearray(canonical_json(payload))
    body[pick % len(body)] ^= 1 << (pick % 8)
    env["payload"] = b64e(bytes(body))
    with pytest.raises(IntegrityError):
        verify_envelope(env, key.public_key)
