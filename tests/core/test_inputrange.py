"""InputRange: validation, its JSON form, and the helpers generators use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import InputError
from core.inputrange import UNIT, InputRange


def test_helpers() -> None:
    r = InputRange(-2, 3)
    assert (r.low, r.high, r.span) == (-2.0, 3.0, 5.0) and isinstance(r.low, float)
    assert r.scale(np.array([0.0, 0.5, 1.0])).tolist() == [-2.0, 0.5, 3.0]
    assert r.clip(np.array([-9.0, 0.0, 9.0])).tolist() == [-2.0, 0.0, 3.0]
    assert r.clip(np.array([9.0])).dtype == np.float32
    assert r.contains(np.array([-2.0, 3.0])) and not r.contains(np.array([3.001]))
    assert InputRange.of_values(np.array([[0.5, -1.0], [2.0, 0.0]])) == InputRange(-1.0, 2.0)
    assert UNIT == InputRange() == InputRange(0.0, 1.0)


@pytest.mark.parametrize(("low", "high"), [(1, 1), (2, 1), (0, math.inf), (math.nan, 1), (True, 2),
                                           ("0", 1)])
def test_invalid_ranges(low: object, high: object) -> None:
    with pytest.raises(InputError, match="an input range needs"):
        InputRange(low, high)  # type: ignore[arg-type]


def test_json_form_is_strict() -> None:
    r = InputRange(-1.5, 2.5)
    assert InputRange.from_dict(r.to_dict()) == r and r.to_dict() == {"low": -1.5, "high": 2.5}
    for bad in ([0, 1], {"low": 0}, {"low": 0, "high": 1, "mean": 0}, {"low": "0", "high": 1}):
        with pytest.raises(InputError):
            InputRange.from_dict(bad)
    with pytest.raises(InputError, match=r"every input value is 3\.0"):
        InputRange.of_values(np.full(4, 3.0))


def test_from_mean_std() -> None:
    imagenet = InputRange.from_mean_std([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert imagenet.low == pytest.approx(-0.485 / 0.229) and imagenet.high == pytest.approx(0.594 / 0.225)
    assert InputRange.from_mean_std([10], [2], raw=InputRange(0, 255)) == InputRange(-5.0, 122.5)
    with pytest.raises(InputError, match="one value per channel"):
        InputRange.from_mean_std([0.5], [0.5, 0.5])
