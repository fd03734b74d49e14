"""RFC 8785 canonical JSON and strict parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.canonical import b64d, canonical_json, parse_json
from core.errors import InputError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": [True, None]}, b'{"a":[true,null],"b":1}'),
        ({"x": 1e21, "y": 1e-7, "z": 0.1, "w": -0.0}, b'{"w":0,"x":1e+21,"y":1e-7,"z":0.1}'),
        ({"\u20ac": "\u00e9"}, '{"\u20ac":"\u00e9"}'.encode()),
        # RFC 8785 section 3.2.3: keys sort by UTF-16 code units
        ({"\U0001f600": 1, "\ufb33": 2}, '{"\U0001f600":1,"\ufb33":2}'.encode()),
    ],
)
def test_canonical_form(value: object, expected: bytes) -> None:
    assert canonical_json(value) == expected


def test_refusals() -> None:
    with pytest.raises(InputError, match="cannot be canonically encoded"):
        canonical_json({"x": float("inf")})
    with pytest.raises(InputError, match="bundle contains NaN, which is not a number"):
        parse_json(b'{"x": NaN}', what="bundle")
    with pytest.raises(InputError, match="bundle is not valid JSON: Expecting"):
        parse_json(b'{"x": ', what="bundle")
    with pytest.raises(InputError, match="salt is not valid base64"):
        b64d("***", what="salt")


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_fast_path_gives_the_reference_bytes(value: object) -> None:
    import rfc8785

    try:
        want = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):
        with pytest.raises(InputError):
            canonical_json(value)
        return
    assert canonical_json(value) == want
