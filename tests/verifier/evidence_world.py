"""Owners, registries and suspects for the evidence tests: all real (SQLite, loopback HTTP)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data import load_digits
from core.modelio import save_model
from core.probeset import ProbeSet
from registry import Registry, generate_owner_key
from registry.dsse import payload_of, sign_envelope
from registry.keys import OwnerKey
from verifier.evidence import EVIDENCE_TYPE, Pins, read_bundle
from verifier.selection import correct_for_selection
from verifier.stats import Futility, compute_statistics
from verifier.transcript import tests_from_records as match_bits
from verifier.verify import VerifyOptions, VerifyOutcome, probesets_in_log, verify_suspect
from verifier.wire.transport import HttpSettings

from .helpers import untrained

SHAPE = (1, 8, 8)


@dataclass
class Owner:
    """An owner key with its own registry and one registered (untrained) model ``m``."""

    home: Path
    key: OwnerKey
    db: str
    registry: Registry
    model_path: Path

    @property
    def pins(self) -> Pins:
        """What a third party pins after reading this owner's published key."""
        return Pins(owner_key_ids=frozenset({self.key.key_id}), key_source="test")

    def publish_key(self) -> Path:
        """Write the owner's public key as a PEM file (what ``owner.pub`` holds)."""
        path = self.home / "owner.pub"
        path.write_text(self.key.public_pem(), encoding="utf-8")
        return path

    def register(self, probes: ProbeSet, *, model: str = "m", secret_key: bytes | None = None) -> int:
        """Commit ``probes`` to ``model``; the probe set's id."""
        return self.registry.add_probeset(self.key, model, probes, secret_key=secret_key)

    def verify(self, suspect: str, evidence: Path, *, models: tuple[str, ...] = ("m",),
               budget: int = 40, open_keys: bool = False, **options: Any) -> VerifyOutcome:
        """Run ``wm verify`` against ``suspect`` through the library, writing ``evidence``."""
        opts = VerifyOptions(suspect=suspect, models=models, alpha=1e-6, budget=budget, batch_size=4,
                             evidence=evidence, settings=HttpSettings(concurrency=1),
                             open_keys=open_keys, **options)
        return verify_suspect(self.registry, self.key, opts, load_digits().test.x)


def make_owner(tmp: Path, name: str, *, model: str = "m", seed: int = 0) -> Owner:
    """A fresh owner key (named ``name``), registry, and a registered untrained model."""
    home = tmp / f"home-{name}-{seed}"
    key = generate_owner_key(home, name, passphrase="pw", kdf_rounds=1_000)
    db = f"sqlite:///{home / 'registry.db'}"
    registry = Registry.open(db)
    path = tmp / f"{name}-{seed}.pt2"
    save_model(untrained(seed=seed), path, input_shape=SHAPE, num_classes=10, arch="mlp")
    registry.add_model(key, model, path, arch="mlp", input_shape=list(SHAPE), num_classes=10,
                       data="digits")
    return Owner(home, key, db, registry, path)


def resign(owner: Owner, bundle: Path | dict[str, Any],
           mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The bundle's payload changed by ``mutate`` and signed again by the owner key."""
    envelope = read_bundle(bundle) if isinstance(bundle, Path) else bundle
    payload = copy.deepcopy(payload_of(envelope))
    mutate(payload)
    return sign_envelope(owner.key, EVIDENCE_TYPE, payload)


def restate(payload: dict[str, Any], owner: Owner) -> None:
    """What a framer does after forging records: recompute the statistics so they agree."""
    labels = [{o["index"]: o["label"] for o in t["openings"]} for t in payload["tests"]]
    header = payload["transcript"]["header"]
    sources = [{"model": t["model"], "kind": t["kind"], "null": t["null"], "unspent": s.get("unspent")}
               for t, s in zip(payload["tests"], header["sources"], strict=True)]
    stats = compute_statistics(
        match_bits(sources, payload["transcript"]["records"], lambda s, i: labels[s][i]),
        alpha=header["alpha"], mode=header["mode"], models=header["models"],
        futility=Futility.from_dict(header.get("futility")))
    selection = correct_for_selection(stats, probesets_in_log(owner.registry))
    payload.update(statistics=stats.to_dict(), verdict=selection.verdict,
                   p_value=selection.p_value, model=selection.model)
