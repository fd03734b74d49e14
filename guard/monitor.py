"""Per-client extraction monitoring after PRADA.

Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting Against DNN Model
Stealing Attacks" (IEEE EuroS&P 2019), section IV: for each client, keep a
growing set ``G_c`` of its past queries per predicted class ``c``; for each
new query ``x`` (predicted ``c``) record the minimum L2 distance ``d`` to
``G_c``; ``x`` joins ``G_c`` when ``d`` exceeds that class's threshold
``max(T_c, mean(D_c) - std(D_c))``. Benign query streams give roughly normally
distributed minimum distances; synthetic or perturbed queries (Jacobian
augmentation, noisy copies of a seed pool) give many near-zero distances.
The Shapiro–Wilk test's statistic ``W`` over the recorded distances falls
below ``delta`` (the paper uses 0.90 to 0.96) and the client is flagged.

The monitor runs off the request path (a lock-free deque drained every
``poll_interval`` seconds by one thread, so a request costs an append, not a
thread wake-up), keeps
clients' inputs in memory only (bounded per client, least recently seen
clients dropped), and persists only statistics (never inputs) to a JSON
snapshot that ``wm guard report`` reads.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from core.files import write_atomic

__all__ = ["ClientReport", "ExtractionMonitor", "PradaState", "read_snapshot"]

DEFAULT_DELTA = 0.96
MIN_DISTANCES = 50
_SNAPSHOT_TYPE = "wm.guard-monitor/v1"


@dataclass(frozen=True)
class ClientReport:
    """What the monitor knows about one client (statistics only)."""

    client: str
    queries: int
    distances: int
    shapiro_w: float | None
    shapiro_p: float | None
    flagged: bool
    last_seen: float


class PradaState:
    """PRADA's state for one client.

    Per class, the growing set is a preallocated float64 buffer with the
    squared norm of each row, so a query's minimum distance is one
    matrix-vector product (``|g|^2 - 2 g.v + |v|^2``, in float64 so that
    near-duplicates, PRADA's signal, keep their small distances) instead of a
    fresh ``[rows, D]`` difference array; the threshold's mean and standard
    deviation are kept as running sums.

    Args:
        max_growing: most queries kept per class in the growing set (memory bound).
        max_distances: most recent minimum distances kept for the test.
    """

    def __init__(self, max_growing: int = 2048, max_distances: int = 5000) -> None:
        self.max_growing = max_growing
        self.max_distances = max_distances
        self._rows: dict[int, np.ndarray] = {}
        self._norms: dict[int, np.ndarray] = {}
        self._size: dict[int, int] = {}
        self._joined: dict[int, tuple[int, float, float]] = {}  # count, sum, sum of squares
        self.distances: deque[float] = deque(maxlen=max_distances)
        self.queries = 0
        self.last_seen = 0.0

    def _join(self, label: int, v: np.ndarray, norm: float) -> None:
        n = self._size[label]
        rows = self._rows[label]
        if n == rows.shape[0]:
            grown = np.empty((min(2 * n, self.max_growing), rows.shape[1]))
            grown[:n] = rows
            self._rows[label] = rows = grown
            norms = np.empty(grown.shape[0])
            norms[:n] = self._norms[label][:n]
            self._norms[label] = norms
        rows[n] = v
        self._norms[label][n] = norm
        self._size[label] = n + 1

    def observe(self, x: np.ndarray, label: int) -> float | None:
        """Add one query (flattened) with its predicted class; its minimum distance, if any."""
        self.queries += 1
        v = np.asarray(x, dtype=np.float64).reshape(-1)
        norm = float(v @ v)
        if label not in self._rows:
            self._rows[label] = np.empty((min(8, self.max_growing), v.size))
            self._norms[label] = np.empty(self._rows[label].shape[0])
            self._size[label] = 0
            self._joined[label] = (0, 0.0, 0.0)
            self._join(label, v, norm)
            return None
        n = self._size[label]
        squared = self._norms[label][:n] - 2.0 * (self._rows[label][:n] @ v) + norm
        d = float(np.sqrt(max(float(squared.min()), 0.0)))
        self.distances.append(d)
        count, total, total_sq = self._joined[label]
        threshold = 0.0
        if count:
            mean = total / count
            threshold = max(0.0, mean - float(np.sqrt(max(total_sq / count - mean * mean, 0.0))))
        if d > threshold and n < self.max_growing:
            self._join(label, v, norm)
            self._joined[label] = (count + 1, total + d, total_sq + d * d)
        return d

    def test(self, delta: float) -> tuple[float | None, float | None, bool]:
        """Shapiro–Wilk ``(W, p, flagged)`` over the recorded distances."""
        if len(self.distances) < MIN_DISTANCES:
            return None, None, False
        d = np.asarray(self.distances, dtype=np.float64)
        if np.ptp(d) == 0:
            return 0.0, 0.0, True  # identical distances: nothing like a natural stream
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns that p is approximate for n > 5000
            w, p = stats.shapiro(d)
        return float(w), float(p), bool(w < delta)

class ExtractionMonitor:
    """PRADA for every client of one guard, fed from the request path through a queue.

    Args:
        snapshot_path: where statistics are written (atomically) for ``wm guard report``.
        delta: flag a client when Shapiro–Wilk ``W < delta``.
        max_clients: most clients tracked at once (least recently seen dropped).
        queue_size: most pending observations; beyond it observations are dropped and counted.
        snapshot_interval: seconds between snapshots.
        poll_interval: seconds between drains of the pending observations.
    """

    def __init__(
        self,
        snapshot_path: Path | None,
        *,
        delta: float = DEFAULT_DELTA,
        max_clients: int = 1000,
        queue_size: int = 100_000,
        snapshot_interval: float = 2.0,
        poll_interval: float = 0.05,
    ) -> None:
        self.snapshot_path = snapshot_path
        self.delta = delta
        self.max_clients = max_clients
        self.snapshot_interval = snapshot_interval
        self.clients: OrderedDict[str, PradaState] = OrderedDict()
        self.dropped = 0
        self.queue_size = queue_size
        self.poll_interval = poll_interval
        self._pending: deque[tuple[str, np.ndarray, np.ndarray, float]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, client: str, x: np.ndarray, labels: np.ndarray, when: float) -> None:
        """Queue a request's inputs ``[N, ...]`` and the upstream's labels (never blocks)."""
        if len(self._pending) >= self.queue_size:
            self.dropped += 1
        else:
            self._pending.append((client, x, labels, when))

    def observe(self, client: str, x: np.ndarray, labels: np.ndarray, when: float) -> None:
        """Process one request's queries now (what the thread does)."""
        with self._lock:
            state = self.clients.get(client)
            if state is None:
                state = self.clients[client] = PradaState()
                while len(self.clients) > self.max_clients:
                    self.clients.popitem(last=False)
            self.clients.move_to_end(client)
            state.last_seen = when
            for row, label in zip(x, labels, strict=True):
                state.observe(row, int(label))

    def reports(self) -> list[ClientReport]:
        """Per-client statistics, most queries first."""
        with self._lock:
            out = []
            for client, s in self.clients.items():
                w, p, flagged = s.test(self.delta)
                out.append(ClientReport(client, s.queries, len(s.distances), w, p, flagged,
                                        s.last_seen))
        return sorted(out, key=lambda r: -r.queries)

    def write_snapshot(self) -> None:
        """Write the statistics (no inputs) to :attr:`snapshot_path`, atomically."""
        if self.snapshot_path is None:
            return
        doc = {"type": _SNAPSHOT_TYPE, "delta": self.delta, "dropped": self.dropped,
               "clients": [asdict(r) for r in self.reports()]}
        write_atomic(self.snapshot_path, json.dumps(doc, sort_keys=True).encode())

    def start(self) -> ExtractionMonitor:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._run, name="wm-guard-monitor", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        while self._pending:
            self.observe(*self._pending.popleft())

    def _run(self) -> None:
        next_snapshot = time.monotonic() + self.snapshot_interval
        while not self._stop.wait(self.poll_interval):
            self._drain()
            if time.monotonic() >= next_snapshot:
                self.write_snapshot()
                next_snapshot = time.monotonic() + self.snapshot_interval
        self._drain()
        self.write_snapshot()

    def stop(self) -> None:
        """Process what is pending, write a last snapshot, stop the thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)


def read_snapshot(path: Path) -> dict[str, Any] | None:
    """A monitor snapshot, or ``None`` when there is none (or it is unreadable)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("type") == _SNAPSHOT_TYPE else None
