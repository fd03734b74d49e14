"""`wm verify` names each test's null; a calibrated one with its references and floor."""

from __future__ import annotations

from cli.verify_cmds import _describe_null
from core.probeset import BetaBinomial, Binomial


def test_calibrated_null_shows_references_and_floor() -> None:
    text = _describe_null(BetaBinomial(a=8.0, b=2.0, references=12, p_floor=1 / 7).to_dict())
    assert text == "beta-binomial null from 12 held-out references, floor p >= 0.143"


def test_exact_null_shows_its_chance_level() -> None:
    assert _describe_null(Binomial(0.1).to_dict()) == "binomial null, p0 = 0.1"
