"""``wm guard`` assembled: registry model → key, vault, journal, flusher, monitor, proxy.

:class:`GuardService` wires the pieces of the DAWN-style guard (Szyller et
al., ACM MM 2021) for one registered model, and :func:`guard_report` gathers
what ``wm guard report`` shows: marked-query tallies per client from the
registry log and PRADA statistics (Juuti et al., EuroS&P 2019) from the
monitor's snapshot. Files live in ``$WM_HOME/guard/<model>/``: ``journal.jsonl``
(write-ahead journal, sealed inputs only), ``epochs/`` (sealed epoch keys,
see :mod:`guard.vault`) and ``monitor.json`` (statistics only).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError
from guard.journal import Journal, RegistryFlusher, guard_entries
from guard.monitor import ExtractionMonitor, read_snapshot
from guard.prf import GuardKey, Marker
from guard.proxy import DEFAULT_CLIENT_HEADERS, GuardConfig, GuardProxy, MarkRecorder, upstream_base
from guard.vault import DEFAULT_RETENTION_DAYS, InputVault
from registry.keys import OwnerKey
from registry.log import Registry

__all__ = ["GuardOptions", "GuardService", "guard_dir", "guard_report", "open_vault"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def guard_dir(home: Path, model: str) -> Path:
    """The guard's directory for ``model`` (a file-system-safe name plus a short hash)."""
    safe = _SAFE.sub("_", model)[:64] or "model"
    return Path(home) / "guard" / f"{safe}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def open_vault(home: Path, owner_key: OwnerKey, model: str,
               retention_days: int = DEFAULT_RETENTION_DAYS) -> InputVault:
    """The input vault of ``model`` under ``home``."""
    return InputVault(guard_dir(home, model) / "epochs", owner_key, model, retention_days)


@dataclass(frozen=True)
class GuardOptions:
    """What ``wm guard`` was asked to do (see its ``--help``)."""

    upstream: str
    model: str
    rate: float = 0.01
    upstream_model: str | None = None
    retention_days: int = DEFAULT_RETENTION_DAYS
    client_headers: tuple[str, ...] = DEFAULT_CLIENT_HEADERS
    timeout: float = 30.0
    monitor: bool = True
    flush_interval: float = 0.5
    batch_size: int = 512


class GuardService:
    """One running guard: build with :meth:`open`, then :meth:`start`, serve :attr:`app`, :meth:`close`.

    Raises (from :meth:`open`):
        RegistryError: unknown model. InputError: bad options, or another guard owns the journal.
    """

    def __init__(self, app: GuardProxy, journal: Journal, flusher: RegistryFlusher,
                 vault: InputVault, monitor: ExtractionMonitor | None) -> None:
        self.app = app
        self.journal = journal
        self.flusher = flusher
        self.vault = vault
        self.monitor = monitor

    @classmethod
    def open(cls, home: Path, registry_url: str, owner_key: OwnerKey,
             options: GuardOptions) -> GuardService:
        """Look the model up in the registry and assemble the guard (nothing served yet)."""
        base, name_in_url = upstream_base(options.upstream)
        with Registry.open(registry_url, create=False) as registry:
            info = registry.model(options.model)
        if info.num_classes is None or info.input_shape is None:
            raise InputError(f"model {options.model!r} was registered without its class count "
                             "and input shape")
        if info.owner_key_id != owner_key.key_id:
            raise InputError(f"model {options.model!r} belongs to another owner key")
        marker = Marker(GuardKey.derive(owner_key, options.model), options.rate, info.num_classes)
        config = GuardConfig(
            upstream=base, model=options.model,
            upstream_model=options.upstream_model or name_in_url or options.model,
            num_classes=info.num_classes, input_shape=tuple(info.input_shape),
            timeout=options.timeout, client_headers=options.client_headers,
        )
        directory = guard_dir(home, options.model)
        vault = open_vault(home, owner_key, options.model, options.retention_days)
        journal = Journal(directory, options.model)
        try:
            flusher = RegistryFlusher(registry_url, owner_key, journal, scheme=marker.scheme,
                                      batch_size=options.batch_size,
                                      interval=options.flush_interval)
        except BaseException:
            journal.close()
            raise
        monitor = ExtractionMonitor(directory / "monitor.json") if options.monitor else None
        app = GuardProxy(config, marker, MarkRecorder(vault, journal, flusher), monitor)
        return cls(app, journal, flusher, vault, monitor)

    def start(self) -> GuardService:
        """Shred expired epochs, replay and flush the journal, start the background threads."""
        self.vault.shred_expired()
        self.flusher.start()
        if self.monitor is not None:
            self.monitor.start()
        return self

    def close(self) -> None:
        """Flush every journaled record to the registry, stop the threads, release the journal."""
        try:
            if self.monitor is not None:
                self.monitor.stop()
            self.flusher.stop()
        finally:
            self.journal.close()


def guard_report(home: Path, registry_url: str, model: str | None = None) -> list[dict[str, Any]]:
    """Per model and client: marked queries logged, and PRADA's verdict where monitored.

    Returns:
        One dict per (model, client): ``model``, ``client``, ``marked``, ``queries``,
        ``shapiro_w``, ``shapiro_p``, ``flagged`` (``None`` where the monitor has no data).
    """
    with Registry.open(registry_url, create=False) as registry:
        if model is not None:
            registry.model(model)
        marked: dict[str, Counter[str]] = {}
        for _, payload in guard_entries(registry, model):
            m = str(payload.get("model"))
            for rec in payload.get("records", []):
                marked.setdefault(m, Counter())[str(rec.get("client"))] += 1
        models = [model] if model is not None else sorted(
            set(marked) | {i.name for i in registry.models()
                           if (guard_dir(home, i.name) / "monitor.json").exists()})
    rows: list[dict[str, Any]] = []
    for m in models:
        snap = read_snapshot(guard_dir(home, m) / "monitor.json") or {"clients": []}
        monitored = {c["client"]: c for c in snap.get("clients", []) if isinstance(c, dict)}
        counts = marked.get(m, Counter())
        for client in sorted(set(counts) | set(monitored),
                             key=lambda c: (-(monitored.get(c, {}).get("queries") or 0), c)):
            s = monitored.get(client, {})
            rows.append({"model": m, "client": client, "marked": counts.get(client, 0),
                         "queries": s.get("queries"), "shapiro_w": s.get("shapiro_w"),
                         "shapiro_p": s.get("shapiro_p"), "flagged": s.get("flagged")})
    return rows
