"""Correction for the probe sets an owner could have chosen from.

An owner who has committed many probe sets (or models) could test a suspect
against whichever one it happens to match. The log shows every set the owner
committed, so the verdict is corrected for all ``K`` of them, tested or not
(DESIGN.md, "Trust": nulls nobody chooses).

For a model ``m`` whose ``|S_m|`` sets were tested, the corrected p-value is
``min(1, K / |S_m| * p_m)``, and the verdict takes the smallest over models.
This is valid whatever the owner selected. In sequential mode ``p_m`` is
``1 / sup_t E_m(t)`` for the mean ``E_m`` of the tested sets' e-processes; the
mean over all ``K`` committed sets, untested ones held at 1, is an e-process
(Vovk & Wang 2021, section 4) and is at least ``|S_m| / K * E_m``, so
``K / |S_m| * p_m`` is at least its anytime-valid p-value. With ``--fixed``,
``p_m = |S_m| * min p_i`` and the correction is Bonferroni over all ``K``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import InputError
from verifier.stats import Statistics, Verdict

__all__ = ["Selection", "correct_for_selection"]


@dataclass(frozen=True)
class Selection:
    """The verdict corrected for every committed probe set."""

    committed: int
    p_value: float
    verdict: Verdict
    model: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as signed in the evidence bundle."""
        return {"committed": self.committed, "p_value": self.p_value, "verdict": self.verdict,
                "model": self.model}


def correct_for_selection(stats: Statistics, committed: int) -> Selection:
    """Correct ``stats`` for the ``committed`` probe sets the owner could have tested.

    Raises:
        InputError: fewer committed sets than the statistics test.
    """
    if committed < len(stats.tests):
        raise InputError(f"{len(stats.tests)} probe sets were tested, "
                         f"but only {committed} counted as committed")
    best_p, best_model = 1.0, None
    for m in stats.models:
        tested = sum(1 for t in stats.tests if t.model == m.model)
        if tested == 0:
            continue
        p = min(1.0, committed / tested * m.p_value)
        if best_model is None or p < best_p:
            best_p, best_model = p, m.model
    # short of alpha after correction: "not_owned", unless too few probes were answered to decide
    verdict: Verdict = "owned" if best_p <= stats.alpha else (
        "not_owned" if stats.verdict == "owned" else stats.verdict)
    return Selection(committed=committed, p_value=best_p, verdict=verdict, model=best_model)
