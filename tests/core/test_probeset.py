"""ProbeSet commitments, openings and nulls."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from core.canonical import canonical_json
from core.errors import InputError, IntegrityError
from core.inputrange import UNIT, InputRange
from core.probeset import (
    BetaBinomial,
    Binomial,
    ProbeOpening,
    ProbeSet,
    null_from_dict,
    probe_leaf,
)


def make(n: int = 8, seed: int = 0, kind: str = "watermark") -> ProbeSet:
    g = torch.Generator().manual_seed(seed)
    return ProbeSet(
        inputs=torch.rand(n, 1, 4, 4, generator=g),
        expected=torch.randint(0, 10, (n,), generator=g),
        kind=kind,  # type: ignore[arg-type]
        scheme=f"test:n={n}",
        null=Binomial(0.1),
        num_classes=10,
        salts=tuple(bytes([i]) * 32 for i in range(n)),
    )


def test_openings_verify_against_the_root() -> None:
    p = make(13)
    for opening in p.open(range(13)):
        opening.verify(p.root)
        ProbeOpening.from_dict(json.loads(json.dumps(opening.to_dict()))).verify(p.root)


@pytest.mark.parametrize("field", ["label", "input", "salt", "index"])
def test_changing_one_probe_breaks_its_opening(field: str) -> None:
    p = make(9)
    o = p.open([4])[0]
    d = o.to_dict()
    if field == "label":
        d["label"] = (d["label"] + 1) % 10
    elif field == "input":
        arr = o.input.copy()
        arr.flat[3] = np.nextafter(arr.flat[3], np.float32(2))
        d = ProbeOpening(o.index, arr, o.label, o.salt, o.tree_size, o.proof).to_dict()
    elif field == "salt":
        d = ProbeOpening(o.index, o.input, o.label, b"\xff" * 32, o.tree_size, o.proof).to_dict()
    else:
        d["index"] = 5
    with pytest.raises(IntegrityError, match="does not open against the commitment"):
        ProbeOpening.from_dict(d).verify(p.root)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=40), st.data())
def test_changing_any_probe_changes_the_root(n: int, data: st.DataObject) -> None:
    p = make(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    labels = p.expected.clone()
    labels[i] = (labels[i] + 1) % 10
    q = ProbeSet(p.inputs, labels, p.kind, p.scheme, p.null, p.num_classes, p.salts)
    assert q.root != p.root


def test_leaf_format_is_canonical_json() -> None:
    x = np.zeros((1, 2, 2), np.float32)
    leaf = probe_leaf(3, x, 7, b"\x01" * 32)
    assert leaf == canonical_json({"index": 3, "input": "AAAAAAAAAAAAAAAAAAAAAA==", "label": 7,
                                   "salt": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
                                   "shape": [1, 2, 2], "type": "wm.probe/v1"})


def test_secret_round_trip_and_public_summary() -> None:
    p = make(6)
    q = ProbeSet.from_bytes(p.to_bytes())
    assert q.root == p.root and q.scheme == p.scheme and q.null == p.null
    s = json.dumps(p.summary())
    assert p.root.hex() in s and "salt" not in s and "input\"" not in s
    with pytest.raises(InputError, match="malformed probe set"):
        ProbeSet.from_bytes(b"garbage")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "trigger"}, "unknown probe set kind 'trigger'"),
        ({"inputs": torch.zeros(8, 1, 4, 4, dtype=torch.float64)}, "must be a float32 tensor"),
        ({"expected": torch.zeros(8, dtype=torch.int32)}, "int64 tensor of shape"),
        ({"expected": torch.full((8,), 10)}, r"expected labels must lie in \[0, 10\)"),
        ({"salts": (b"x",) * 8}, "one 32-byte salt per probe"),
        ({"inputs": torch.full((8, 1, 4, 4), float("nan"))}, "NaN or infinity"),
    ],
)
def test_malformed_probe_sets(kwargs: dict[str, object], message: str) -> None:
    p = make(8)
    fields = {"inputs": p.inputs, "expected": p.expected, "kind": p.kind, "scheme": p.scheme,
              "null": p.null, "num_classes": 10, "salts": p.salts, **kwargs}
    with pytest.raises(InputError, match=message):
        ProbeSet(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 20), (20, 20), (9, 100)])
def test_binomial_tail_is_exact(k: int, n: int) -> None:
    direct = sum(stats.binom.pmf(j, n, 0.1) for j in range(k, n + 1))
    assert Binomial(0.1).tail(k, n) == pytest.approx(direct, rel=1e-9)


def test_beta_binomial_tail_has_a_floor() -> None:
    null = BetaBinomial(a=2.0, b=8.0, references=20, p_floor=1e-3)
    assert null.tail(0, 50) == 1.0
    assert null.tail(50, 50) == 1e-3
    assert null.tail(5, 50) > 1e-3 and null.mean == pytest.approx(0.2)


@pytest.mark.parametrize("null", [Binomial(0.25), BetaBinomial(1.5, 3.0, 12, 1e-4)])
def test_null_round_trip(null: Binomial | BetaBinomial) -> None:
    assert null_from_dict(null.to_dict()) == null


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"family": "poisson"}, "unknown null model family 'poisson'"),
        ({"family": "binomial"}, "malformed null model"),
        ({"family": "binomial", "p0": 1.5}, "needs 0 < p0 < 1"),
        ({"family": "beta-binomial", "a": 1, "b": 1, "references": 0, "p_floor": 0.1},
         "at least one reference model"),
    ],
)
def test_bad_nulls(d: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        null_from_dict(d)


def test_input_range_is_recorded_and_enforced_for_made_probes() -> None:
    p = make(6)
    assert p.input_range == UNIT and p.summary()["input_range"] == {"low": 0.0, "high": 1.0}
    wide = dataclasses.replace(p, inputs=p.inputs * 4 - 2, input_range=InputRange(-2.5, 2.5))
    q = ProbeSet.from_bytes(wide.to_bytes())
    assert q.input_range == InputRange(-2.5, 2.5) and q.root == wide.root
    assert wide.summary()["input_range"] == {"low": -2.5, "high": 2.5}
    for kind in ("watermark", "fingerprint"):
        with pytest.raises(InputError, match=rf"{kind} probes must lie in the input range \[0, 1\]"):
            dataclasses.replace(make(6, kind=kind), inputs=p.inputs * 4 - 2)
    # guard probes are what clients sent, whatever it was
    assert dataclasses.replace(make(6, kind="guard"), inputs=p.inputs * 4 - 2).input_range == UNIT
