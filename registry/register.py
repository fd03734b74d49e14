"""Registering a trained model file, and its watermark secret, in one call.

``wm train`` writes beside ``MODEL.pt2`` a secret sidecar ``MODEL.pt2.wmkey``
(mode 0600), in the format :mod:`core.secretfile` fixes and reads for both
packages.

:func:`register_model` records the model (file and weights digests,
architecture, input shape, classes, read off the ``.pt2``) and, when the
sidecar exists, commits its probe set as the model's mark, the key and probes
sealed for the owner. ``wm register`` and ``wm train --register`` both call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import InputError
from core.secretfile import SECRET_SUFFIX, SECRET_TYPE, read_secret_file
from registry.keys import OwnerKey
from registry.log import Registry

if TYPE_CHECKING:
    from core.probeset import ProbeSet

__all__ = [
    "SIDECAR_SUFFIX",
    "SIDECAR_TYPE",
    "Registration",
    "read_watermark_secret",
    "register_model",
]

SIDECAR_SUFFIX = SECRET_SUFFIX
SIDECAR_TYPE = SECRET_TYPE


@dataclass(frozen=True)
class Registration:
    """What :func:`register_model` wrote: the model's entry and, if any, the mark's id."""

    name: str
    model_entry: int
    probeset_id: int | None
    file_sha256: str


def read_watermark_secret(path: str | Path) -> tuple[bytes, ProbeSet]:
    """The watermark key and probe set from a ``.wmkey`` sidecar.

    Raises:
        InputError: unreadable or malformed (the message never quotes its content).
    """
    key, probeset, _ = read_secret_file(path)
    return key, probeset


def register_model(
    registry: Registry,
    owner_key: OwnerKey,
    model_path: str | Path,
    name: str,
    *,
    sidecar: str | Path | None = None,
) -> Registration:
    """Register ``model_path`` under ``name``, with its watermark if a sidecar exists.

    Args:
        registry: an open registry.
        owner_key: the unlocked owner key that signs.
        model_path: a wm ``.pt2`` file.
        name: the model's name in the registry (unique).
        sidecar: the watermark secret; default ``MODEL.pt2.wmkey`` when that exists.

    Raises:
        ModelFileError: not a loadable ``.pt2``. InputError: the name is taken or the
            sidecar is malformed or does not fit the model.
    """
    from core.modelio import load_model, weights_digest

    path = Path(model_path)
    model = load_model(path)
    secret = None
    side = Path(sidecar) if sidecar is not None else path.with_name(path.name + SIDECAR_SUFFIX)
    if sidecar is not None or side.exists():
        key, first, further = read_secret_file(side)  # one read: the sets belong to one file
        secret = (key, first)
        for probeset in (first, *further):
            if probeset.num_classes != model.num_classes or probeset.input_shape != tuple(model.input_shape):
                raise InputError(f"watermark secret {side} does not fit model {path}")
    entry = registry.add_model(
        owner_key,
        name,
        path,
        weights_sha256=weights_digest(model.state_dict),
        arch=model.arch,
        input_shape=list(model.input_shape),
        num_classes=model.num_classes,
        data=model.data,
    )
    probeset_id = None
    if secret is not None:
        probeset_id = registry.add_probeset(owner_key, name, secret[1], secret_key=secret[0])
        for more in further:  # one committed set per scheme the model was trained with
            registry.add_probeset(owner_key, name, more, secret_key=secret[0])
    info = registry.model(name)
    return Registration(name=name, model_entry=entry, probeset_id=probeset_id, file_sha256=info.file_sha256)
