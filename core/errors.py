"""The one error hierarchy of wm.

Every failure a user can cause or act on is a :class:`WmError`. The CLI catches
this base class only, prints ``str(error)`` as one line (plus the
:meth:`WmError.diagnostics` hint when there is one) and exits 2. Library code
raises these and never prints or exits.

::

    WmError
    ├── InputError            bad arguments, files or values from the user
    │   ├── DataError         a data set that is malformed (shape, dtype, NaN, labels)
    │   └── ModelFileError    a model file that is not a loadable .pt2 or does not fit
    ├── KeyError_             owner or watermark keys: missing, wrong passphrase
    ├── RegistryError         the registry database: unreachable, unknown revision
    │   └── IntegrityError    a record, proof, signature or log that does not verify
    ├── SuspectError          a suspect API that is unreachable or answers garbage
    └── EvidenceError         an evidence bundle that does not verify (``part`` names the check)

Messages never contain secrets (keys, passphrases, unspent probes).
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "EvidenceError",
    "InputError",
    "IntegrityError",
    "KeyError_",
    "ModelFileError",
    "RegistryError",
    "SuspectError",
    "WmError",
]


class WmError(Exception):
    """Base class of every error wm reports to a user.

    Args:
        message: one line that says what went wrong.
        hint: optional one line that says what to do about it.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def diagnostics(self) -> str:
        """The message and, when known, what the user can do about it, as one line."""
        message = str(self)
        return f"{message} ({self.hint})" if self.hint else message


class InputError(WmError):
    """An argument, file or value given by the user is unusable."""


class DataError(InputError):
    """A data set is malformed: wrong shapes or dtypes, NaN, labels out of range."""


class ModelFileError(InputError):
    """A model file is not a loadable ``.pt2`` or does not fit the data."""


class KeyError_(WmError):  # noqa: N801, N818 - trailing underscore avoids shadowing builtins.KeyError
    """An owner or watermark key is missing, unreadable or locked by another passphrase."""


class RegistryError(WmError):
    """The registry cannot be used: unreachable, unknown schema revision, missing record."""


class IntegrityError(RegistryError):
    """A record, signature, proof or log does not verify."""


class SuspectError(WmError):
    """A suspect's inference API is unreachable or answers something unusable."""


class EvidenceError(WmError):
    """An evidence bundle does not verify.

    Args:
        message: what failed, in one line.
        part: the check that failed (one of ``verifier.evidence.PARTS``); ``str(error)``
            is ``"<part>: <message>"``.
        hint: optional one line that says what to do about it.
    """

    def __init__(self, message: str, *, part: str, hint: str | None = None) -> None:
        super().__init__(f"{part}: {message}", hint=hint)
        self.part = part
        self.reason = message
