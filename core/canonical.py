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


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of ``value``."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InputError(f"value cannot be canonically encoded as JSON: {exc}") from exc


def parse_json(data: bytes | str, *, what: str) -> Any:
    """Parse JSON, refusing NaN and infinities, with one clear error naming ``what``.

    Raises:
        InputError: ``"{what} contains NaN, which is not a number"`` for the
            non-standard constants Python's parser would accept, else
            ``"{what} is not valid JSON: ..."``.
    """

    class _ConstantError(ValueError):
        pass

    def _no_constants(name: str) -> Any:
        raise _ConstantError(name)

    try:
        return json.loads(data, parse_constant=_no_constants)
    except _ConstantError as exc:
        raise InputError(f"{what} contains {exc}, which is not a number") from exc
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
