"""``wm guard`` assembled: registry model → epoch, vault, journal, flusher, monitor, proxy.

:class:`GuardService` wires the pieces of the DAWN-style guard (Szyller et
al., ACM MM 2021) for one registered model in one worker process, and
:func:`guard_report` gathers what ``wm guard report`` shows: marked-query
tallies per client from the registry log and PRADA statistics (Juuti et al.,
EuroS&P 2019) from the monitors' snapshots. Files live in
``$WM_HOME/guard/<model>/``: ``journal-<W>.jsonl`` (worker W's write-ahead
journal segment, sealed inputs only), ``epochs/`` (sealed vault keys, see
:mod:`guard.vault`) and ``monitor-<W>.json`` (statistics only).

Several workers (``wm guard --workers N``) each own one journal segment (its
own lock, journal id and sequence numbers), so they never contend on a file;
each segment is flushed to the registry under its own journal id, whose
cursor in the log means no record is written twice. :func:`recover_segments`
flushes every segment a previous run left (whatever its worker count) before
the workers start, so none is lost.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError
from guard.clients import ClientKeys
from guard.epochs import current_epoch
from guard.http import BackgroundHTTPServer
from guard.journal import Journal, RegistryFlusher, guard_entries
from guard.monitor import ExtractionMonitor, read_snapshot
from guard.prf import GuardKey, Marker
from guard.proxy import DEFAULT_CLIENT_HEADERS, GuardConfig, GuardProxy, MarkRecorder, upstream_base
from guard.vault import DEFAULT_RETENTION_DAYS, InputVault
from registry.keys import OwnerKey
from registry.log import Registry

__all__ = ["GuardOptions", "GuardService", "guard_dir", "guard_report", "open_vault",
           "recover_segments"]

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
    clients: Path | None = None


class GuardService:
    """One running guard worker: build with :meth:`open`, then :meth:`start`, serve
    :meth:`GuardProxy.handle` (:meth:`serve_background`, or ``wm guard``), :meth:`close`.

    Raises (from :meth:`open`):
        RegistryError: unknown model. InputError: bad options, or another guard owns the segment.
    """

    def __init__(self, proxy: GuardProxy, journal: Journal, flusher: RegistryFlusher,
                 vault: InputVault, monitor: ExtractionMonitor | None) -> None:
        self.proxy = proxy
        self.journal = journal
        self.flusher = flusher
        self.vault = vault
        self.monitor = monitor

    @classmethod
    def open(cls, home: Path, registry_url: str, owner_key: OwnerKey, options: GuardOptions,
             *, segment: int = 0) -> GuardService:
        """Look the model up, take (or commit) its epoch, and assemble worker ``segment``."""
        base, name_in_url = upstream_base(options.upstream)
        with Registry.open(registry_url, create=False) as registry:
            info = registry.model(options.model)
            if info.num_classes is None or info.input_shape is None:
                raise InputError(f"model {options.model!r} was registered without its class count "
                                 "and input shape")
            if info.owner_key_id != owner_key.key_id:
                raise InputError(f"model {options.model!r} belongs to another owner key")
            epoch = current_epoch(registry, owner_key, options.model, options.rate, info.num_classes)
        clients = ClientKeys.load(options.clients) if options.clients is not None else None
        marker = Marker(GuardKey.derive(owner_key, options.model), epoch)
        config = GuardConfig(
            upstream=base, model=options.model,
            upstream_model=options.upstream_model or name_in_url or options.model,
            num_classes=info.num_classes, input_shape=tuple(info.input_shape),
            timeout=options.timeout, client_headers=options.client_headers,
        )
        directory = guard_dir(home, options.model)
        vault = open_vault(home, owner_key, options.model, options.retention_days)
        journal = Journal(directory, options.model, segment)
        try:
            flusher = RegistryFlusher(registry_url, owner_key, journal,
                                      batch_size=options.batch_size,
                                      interval=options.flush_interval)
        except BaseException:
            journal.close()
            raise
        monitor = (ExtractionMonitor(directory / f"monitor-{segment}.json") if options.monitor
                   else None)
        proxy = GuardProxy(config, marker, MarkRecorder(vault, journal, flusher), monitor, clients)
        return cls(proxy, journal, flusher, vault, monitor)

    def start(self) -> GuardService:
        """Shred expired epochs, replay and flush the journal, start the background threads."""
        self.vault.shred_expired()
        self.flusher.start()
        if self.monitor is not None:
            self.monitor.start()
        return self

    def serve_background(self, host: str = "127.0.0.1", port: int = 0) -> BackgroundHTTPServer:
        """Serve the proxy on its own event loop in a thread (tests, benchmarks); not started."""
        return BackgroundHTTPServer(self.proxy.handle, host, port, on_stop=self.proxy.aclose)

    def close(self) -> None:
        """Flush every journaled record to the registry, stop the threads, release the journal."""
        try:
            if self.monitor is not None:
                self.monitor.stop()
            self.flusher.stop()
        finally:
            self.journal.close()


def recover_segments(home: Path, registry_url: str, owner_key: OwnerKey, model: str) -> int:
    """Flush to the registry whatever any journal segment of ``model`` still holds; how many records.

    Raises:
        InputError: a guard is running for the model (a segment is locked).
    """
    directory = guard_dir(home, model)
    written = 0
    for segment in Journal.segments(directory):
        journal = Journal(directory, model, segment)
        try:
            flusher = RegistryFlusher(registry_url, owner_key, journal)
            try:
                written += flusher.flush()
                journal.compact(flusher.flushed_seq)
            finally:
                flusher.close()
        finally:
            journal.close()
    return written


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
                           if any(guard_dir(home, i.name).glob("monitor-*.json"))})
    rows: list[dict[str, Any]] = []
    for m in models:
        monitored = _monitored(guard_dir(home, m))
        counts = marked.get(m, Counter())
        for client in sorted(set(counts) | set(monitored),
                             key=lambda c: (-(monitored.get(c, {}).get("queries") or 0), c)):
            s = monitored.get(client, {})
            rows.append({"model": m, "client": client, "marked": counts.get(client, 0),
                         "queries": s.get("queries"), "shapiro_w": s.get("shapiro_w"),
                         "shapiro_p": s.get("shapiro_p"), "flagged": s.get("flagged")})
    return rows


def _monitored(directory: Path) -> dict[str, dict[str, Any]]:
    """Per client, the workers' PRADA statistics together: queries summed, the lowest W, any flag.

    A client whose connections reached several workers is judged by each on
    its share; the report keeps the most suspicious judgement.
    """
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("monitor-*.json")):
        snap = read_snapshot(path) or {"clients": []}
        for c in snap.get("clients", []):
            if not isinstance(c, dict) or "client" not in c:
                continue
            seen = out.get(c["client"])
            if seen is None:
                out[c["client"]] = dict(c)
                continue
            seen["queries"] = (seen.get("queries") or 0) + (c.get("queries") or 0)
            seen["flagged"] = bool(seen.get("flagged")) or bool(c.get("flagged"))
            if c.get("shapiro_w") is not None and (seen.get("shapiro_w") is None
                                                   or c["shapiro_w"] < seen["shapiro_w"]):
                seen["shapiro_w"], seen["shapiro_p"] = c["shapiro_w"], c.get("shapiro_p")
    return out
