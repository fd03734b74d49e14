"""The one clock of wm: UTC time stamps in ISO 8601 (RFC 3339) form.

Every record, transcript line and journal entry that carries a time uses
:func:`utc_now` (``2026-01-01T00:00:00.000Z``: UTC, millisecond precision, a
``Z`` suffix), and :func:`parse_utc` reads such times back, refusing any
without a time zone.
"""

from __future__ import annotations

from datetime import UTC, datetime

from core.errors import InputError

__all__ = ["format_utc", "parse_utc", "utc_now"]


def format_utc(when: datetime) -> str:
    """``when`` (time-zone aware) as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    """The current time as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC)."""
    return format_utc(datetime.now(UTC))


def parse_utc(text: str, *, what: str = "time") -> datetime:
    """An ISO 8601 time with a time zone (``Z`` or ``+HH:MM``), as an aware UTC datetime.

    Raises:
        InputError: not ISO 8601, or no time zone (a bare local time is ambiguous).
    """
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} {text!r} is not an ISO 8601 time") from exc
    if when.tzinfo is None:
        raise InputError(f"{what} {text!r} has no time zone", hint="end it with Z for UTC")
    return when.astimezone(UTC)
