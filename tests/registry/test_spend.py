"""Each probe counts once: concurrent processes spending overlapping batches, both databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import InputError
from registry import Registry, generate_owner_key
from tests.registry.conftest import make_probeset

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4


def test_concurrent_spenders_never_share_a_probe(db_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = generate_owner_key(home, "alice", "pw", kdf_rounds=1000)
    model = tmp_path / "m.pt2"
    model.write_bytes(b"model")
    with Registry.open(db_url) as reg:
        reg.add_model(key, "m", model)
        pid = reg.add_probeset(key, "m", make_probeset(64))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.registry.spend_worker", db_url, str(home), str(pid), str(w),
             str(go)],
            cwd=ROOT, env={**os.environ, "WM_PASSPHRASE": "pw"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in range(WORKERS)
    ]
    go.touch()
    won: list[list[int]] = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        won.append(json.loads(out))
    every = [i for w in won for i in w]
    assert len(every) == len(set(every)), "a probe was spent by two spenders"
    with Registry.open(db_url) as reg:
        unspent = set(reg.unspent_indices(pid))
        assert set(every) == set(range(64)) - unspent
        assert reg.probesets("m")[0].spent == len(every) > 0
        assert sum(len(w) > 0 for w in won) >= 2  # they really raced
        reg.verify_log()


def test_key_random_probe_sets_must_carry_the_exact_null(reg: Registry, owner_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from core.probeset import BetaBinomial, Binomial

    model = tmp_path / "m.pt2"
    model.write_bytes(b"model")
    reg.add_model(owner_key, "m", model)
    size = reg.size()
    for kind, null in [("watermark", Binomial(1e-4)), ("guard", Binomial(0.2)),
                       ("watermark", BetaBinomial(1.0, 9.0, 20, 1e-3))]:
        ps = make_probeset(8, kind=kind)
        object.__setattr__(ps, "null", null)
        want = rf"a {kind} probe set must carry the exact null Binomial\(1/10\)"
        with pytest.raises(InputError, match=want):
            reg.add_probeset(owner_key, "m", ps)
    assert reg.size() == size  # nothing was logged
    fp = make_probeset(8, kind="fingerprint")
    object.__setattr__(fp, "null", BetaBinomial(1.0, 9.0, 20, 1e-3))
    reg.add_probeset(owner_key, "m", fp)  # a fingerprint's null is calibrated, not 1/C
    reg.add_probeset(owner_key, "m", make_probeset(8, kind="guard"))
    assert reg.verify_log().probesets == 2
