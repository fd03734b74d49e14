"""Choosing a suspect client: by name (``--protocol``), or from the URL and metadata (``auto``).

A closed set of protocol names chosen with ``match``; ``auto`` recognises the
URL forms of the Open Inference Protocol (``/v2/models/NAME``), KServe V1
(``/v1/models/NAME``) and TorchServe (``/predictions/NAME``) and confirms the
guess with the endpoint's metadata route. Plain JSON endpoints cannot be
recognised and need ``--protocol json``.
"""

from __future__ import annotations

from typing import Any

from core.errors import InputError
from verifier.wire import oip, torchserve, v1
from verifier.wire.client import Detection, SuspectClient
from verifier.wire.oip import OipClient
from verifier.wire.plain import JsonClient
from verifier.wire.torchserve import TorchServeClient
from verifier.wire.v1 import TfServingClient

__all__ = ["PROTOCOLS", "detect", "make_client"]

PROTOCOLS: tuple[str, ...] = ("auto", "oip", "tfserving", "torchserve", "json")
_ONLY = {"input_field": "json", "output_field": "json", "input_name": "oip"}


def make_client(protocol: str, url: str, **kwargs: Any) -> SuspectClient:
    """The client for a named protocol (not ``auto``: see :func:`detect`).

    Options that only one protocol takes (``input_field``/``output_field`` for
    ``json``, ``input_name`` for ``oip``) are dropped for the others.
    """
    kwargs = {k: v for k, v in kwargs.items() if _ONLY.get(k, protocol) == protocol}
    match protocol:
        case "oip":
            return OipClient(url, **kwargs)
        case "tfserving":
            return TfServingClient(url, **kwargs)
        case "torchserve":
            return TorchServeClient(url, **kwargs)
        case "json":
            return JsonClient(url, **kwargs)
        case _:
            raise InputError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


def detect(url: str, **kwargs: Any) -> tuple[SuspectClient, Detection]:
    """``--protocol auto``: pick the protocol from the URL and confirm it with the metadata.

    Raises:
        InputError: the URL has no known form. SuspectError: the endpoint does not confirm.
    """
    stripped = url.rstrip("/")
    for protocol, form in (("oip", oip.URL), ("tfserving", v1.URL), ("torchserve", torchserve.URL)):
        if form.match(stripped):
            client = make_client(protocol, url, **kwargs)
            try:
                return client, client.describe()
            except BaseException:
                client.close()
                raise
    raise InputError(
        f"cannot tell the protocol of {url!r} from its form",
        hint="give the model's URL (…/v2/models/NAME, …/v1/models/NAME, …/predictions/NAME) "
        "or pass --protocol json",
    )
