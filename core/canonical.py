"""RFC 8785 (JSON Canonicalization Scheme) encoding, and base64 helpers.

Signed payloads, probe commitments and evidence bundles are hashed and signed
over these bytes, so two machines always agree on them. Floats are encoded
per RFC 8785 section 3.2.2.3 (ECMAScript number serialisation); NaN and
infinities are refused.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import rfc8785

from core.errors import InputError

__all__ = ["b64d", "b64e", "canonical_json", "parse_json"]


_SAFE_INT = 2**53 - 1  # RFC 8785 section 3.2.2.3: integers beyond this are IEEE 754 doubles


def _plain(value: Any) -> bool:
    """Whether ``json.dumps`` writes ``value`` exactly as RFC 8785 does.

    True for JSON built of strings, booleans, null, integers within 2**53 and
    objects whose keys lie in the Basic Multilingual Plane (sorting by code
    point then equals RFC 8785's sorting by UTF-16 code unit); string escaping
    is the same in both (every code point was compared). Floats and anything
    else take the reference encoder.
    """
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if -_SAFE_INT <= v <= _SAFE_INT:
                continue
            return False
        if t is dict:
            for k, x in v.items():
                if type(k) is not str or not (k.isascii() or all(ord(c) < 0x10000 for c in k)):
                    return False
                stack.append(x)
            continue
        if t is list or t is tuple:
            stack.extend(v)
            continue
        return False
    return True


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of ``value``.

    Plain values (see :func:`_plain`) are written by the C JSON encoder, which
    gives the same bytes several times faster (the registry's audit hashes and
    checks every entry this way); the rest by the reference encoder.
    """
    if _plain(value):
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
        except UnicodeEncodeError:
            pass  # a lone surrogate: the reference encoder decides
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InputError(f"value cannot be canonically encoded as JSON: {exc}") from exc
    except RecursionError as exc:
        raise InputError("value is nested too deeply to encode as JSON") from exc


class _ConstantError(ValueError):
    pass


def _no_constants(name: str) -> Any:
    raise _ConstantError(name)


def parse_json(data: bytes | bytearray | str, *, what: str) -> Any:
    """Parse JSON, refusing NaN and infinities, with one clear error naming ``what``.

    Raises:
        InputError: ``"{what} contains NaN, which is not a number"`` for the
            non-standard constants Python's parser would accept,
            ``"{what} is nested too deeply"`` past the interpreter's recursion
            limit (a hostile ``[[[[...`` of any length is not a crash), else
            ``"{what} is not valid JSON: ..."``.
    """

    try:
        return json.loads(data, parse_constant=_no_constants)
    except _ConstantError as exc:
        raise InputError(f"{what} contains {exc}, which is not a number") from exc
    except RecursionError:
        raise InputError(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from exc


def b64e(data: bytes) -> str:
    """Standard base64 with padding, as text."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str, *, what: str = "value") -> bytes:
    """Decode standard base64, strictly; a clear error naming ``what`` otherwise."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError, AttributeError) as exc:
        raise InputError(f"{what} is not valid base64") from exc
