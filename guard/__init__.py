"""The guard: watermark the owner's own prediction API against extraction.

After Szyller et al., "DAWN: Dynamic Adversarial Watermarking of Neural
Networks" (ACM MM 2021): a reverse proxy (:class:`GuardProxy`) answers a keyed
fraction R of inputs with key-derived labels (:class:`Marker`), journals every
marked query before answering (:class:`Journal`), flushes the records to the
registry log in batches (:class:`RegistryFlusher`), turns them into a guard
``ProbeSet`` with an exact ``Binomial(1/C)`` null (:func:`commit_guard_probes`),
and watches each client for extraction with PRADA (Juuti et al., EuroS&P 2019;
:class:`ExtractionMonitor`). :class:`GuardService` assembles it for ``wm guard``.
"""

from guard.journal import GUARD_QUERIES_TYPE, GuardRecord, Journal, RegistryFlusher
from guard.monitor import ClientReport, ExtractionMonitor
from guard.prf import GuardKey, Mark, Marker, canonical_bytes, input_digest
from guard.probes import CommitResult, collect_probes, commit_guard_probes
from guard.proxy import GuardConfig, GuardProxy, MarkRecorder, client_identity, upstream_base
from guard.service import GuardOptions, GuardService, guard_report
from guard.vault import InputVault

__all__ = [
    "GUARD_QUERIES_TYPE",
    "ClientReport",
    "CommitResult",
    "ExtractionMonitor",
    "GuardConfig",
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
    "canonical_bytes",
    "client_identity",
    "collect_probes",
    "commit_guard_probes",
    "guard_report",
    "input_digest",
    "upstream_base",
]
