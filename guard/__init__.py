"""The guard: watermark the owner's own prediction API against extraction.

After Szyller et al., "DAWN: Dynamic Adversarial Watermarking of Neural
Networks" (ACM MM 2021): a reverse proxy (:class:`GuardProxy`, served by
:mod:`guard.http`, forwarding through :class:`Upstream`) answers a keyed
fraction R of inputs with key-derived labels (:class:`Marker`, over the
torch-free :mod:`core.marking` under a committed epoch key,
:class:`GuardEpoch`), journals every marked query before answering
(:class:`Journal`), flushes the records to the registry log in batches
(:class:`RegistryFlusher`), turns them into guard ``ProbeSet``s with an exact
``Binomial(1/C)`` null (:func:`commit_guard_probes`), attributes queries by
API key (:class:`ClientKeys`) and watches each client for extraction with
PRADA (Juuti et al., EuroS&P 2019; :class:`ExtractionMonitor`).
:class:`GuardService` assembles one worker; :func:`run_guard` serves ``wm guard``.
"""

from guard.clients import ClientKeys, add_client
from guard.epochs import GUARD_EPOCH_TYPE, GuardEpoch, current_epoch, epochs, rotate_epoch
from guard.http import BackgroundHTTPServer, Request, Response
from guard.journal import GUARD_QUERIES_TYPE, GuardRecord, Journal, RegistryFlusher
from guard.monitor import ClientReport, ExtractionMonitor
from guard.prf import GuardKey, Mark, Marker, canonical_bytes, keyed_input_digest
from guard.probes import CommitResult, collect_probes, commit_guard_probes
from guard.proxy import GuardConfig, GuardProxy, MarkRecorder, client_identity, normal_path, upstream_base
from guard.runner import run_guard
from guard.service import GuardOptions, GuardService, guard_report, recover_segments
from guard.upstream import Upstream, UpstreamAnswer, UpstreamError, UpstreamTimeoutError
from guard.vault import InputVault

__all__ = [
    "GUARD_EPOCH_TYPE",
    "GUARD_QUERIES_TYPE",
    "BackgroundHTTPServer",
    "ClientKeys",
    "ClientReport",
    "CommitResult",
    "ExtractionMonitor",
    "GuardConfig",
    "GuardEpoch",
    "GuardKey",
    "GuardOptions",
    "GuardProxy",
    "GuardRecord",
    "GuardService",
    "InputVault",
    "Journal",
    "Mark",
    "MarkRecorder",
    "Marker",
    "RegistryFlusher",
    "Request",
    "Response",
    "Upstream",
    "UpstreamAnswer",
    "UpstreamError",
    "UpstreamTimeoutError",
    "add_client",
    "canonical_bytes",
    "client_identity",
    "collect_probes",
    "commit_guard_probes",
    "current_epoch",
    "epochs",
    "guard_report",
    "keyed_input_digest",
    "normal_path",
    "recover_segments",
    "rotate_epoch",
    "run_guard",
    "upstream_base",
]
