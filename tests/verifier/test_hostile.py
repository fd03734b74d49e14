"""A malicious suspect, served for real on loopback.

Whatever it answers — runaway nesting, ``10**400``, ``1e400``, NaN, wrong
shapes, objects where numbers belong, labels out of range, a huge body, an
answer that never ends, headers that never end — the client raises
:class:`SuspectError` (``wm verify``: exit 2 with one line, no traceback),
within the deadline, and the registry has spent only the probes that were
actually sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from core.errors import SuspectError
from core.modelio import save_model
from core.serving import BackgroundServer, running_server
from registry.log import Registry
from verifier.wire import HttpSettings, make_client
from watermark import WatermarkSecret, write_secret

from .helpers import OWNER_KEY, digits_watermark, dripping_server, misbehaving_app, untrained

X = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5)).numpy()


@pytest.fixture(scope="module")
def bad() -> Iterator[BackgroundServer]:
    with running_server(misbehaving_app()) as srv:
        yield srv


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("deep", "suspect's answer is nested too deeply"),
        ("bignum", "suspect's output data holds a number too large for float64"),
        ("overflow", "suspect's output data contains NaN or infinity"),
        ("nan", "suspect's answer contains NaN, which is not a number"),
        ("shape", r"suspect's output has shape \[4, 2, 5\]"),
        ("objects", "suspect's output data holds a dict, not a number"),
        ("range", "label outside 0..9"),
        ("garbage", "not valid JSON"),
        ("huge", "byte cap"),
    ],
)
def test_every_malicious_answer_is_a_suspect_error(bad: BackgroundServer, name: str, message: str) -> None:
    settings = HttpSettings(timeout=5.0, retries=0, max_response_bytes=1 << 20)
    with make_client("oip", f"{bad.url}/v2/models/{name}/infer", num_classes=10, input_shape=(1, 8, 8),
                     settings=settings) as client, pytest.raises(SuspectError, match=message) as info:
        client.infer(X)
    assert "\n" not in str(info.value)


def test_an_answer_that_never_ends_is_cut_off_at_the_deadline(bad: BackgroundServer) -> None:
    waits: list[float] = []
    settings = HttpSettings(timeout=5.0, deadline=0.5, retries=3)
    with make_client("oip", f"{bad.url}/v2/models/drip/infer", num_classes=10, input_shape=(1, 8, 8),
                     settings=settings, sleep=waits.append) as client, pytest.raises(
        SuspectError, match=r"did not finish answering within the 0.5 s deadline \(1 attempts\)"
    ):
        client.infer(X)
    assert waits == []  # each byte came within the 5 s read timeout: only the deadline stops it


def test_headers_that_never_end_are_cut_off_at_the_deadline() -> None:
    settings = HttpSettings(timeout=5.0, deadline=0.5, retries=0)
    with dripping_server() as (url, sent):
        with make_client("oip", f"{url}/v2/models/m/infer", num_classes=10, input_shape=(1, 8, 8),
                         settings=settings) as client, pytest.raises(SuspectError, match="deadline"):
            client.infer(X)
        assert 0 < sent[0] < 1000  # stopped long before the 10 kB of headers were through


@pytest.fixture(scope="module")
def owner_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A wm home with a key and an (untrained) model registered with a 100-probe watermark."""
    d = tmp_path_factory.mktemp("hostile")
    env = {"WM_HOME": str(d / "home"), "WM_PASSPHRASE": "pw", "WM_REGISTRY_URL": ""}
    model = save_model(untrained("mlp"), d / "m.pt2", input_shape=(1, 8, 8), num_classes=10, arch="mlp",
                       data="digits")
    write_secret(d / "m.pt2.wmkey", WatermarkSecret(key=OWNER_KEY, probes=digits_watermark()))
    from cli.main import _register_commands, wm

    _register_commands()
    runner = CliRunner(env=env)
    assert runner.invoke(wm, ["keygen", "--name", "alice"]).exit_code == 0
    assert runner.invoke(wm, ["register", str(model), "--name", "owner"]).exit_code == 0
    return d, env


def _spent(env: dict[str, str]) -> int:
    with Registry.open(f"sqlite:///{env['WM_HOME']}/registry.db") as reg:
        (info,) = reg.probesets("owner")
        return info.size - len(reg.unspent_indices(info.id))


@pytest.mark.parametrize("name", ["deep", "bignum", "shape", "drip"])
def test_wm_verify_exits_2_with_one_line_and_spends_only_what_it_sent(
    bad: BackgroundServer, owner_home: tuple[Path, dict[str, str]], name: str, tmp_path: Path
) -> None:
    from cli.main import wm

    _, env = owner_home
    before = _spent(env)
    r = CliRunner(env=env).invoke(wm, [
        "verify", "--suspect", f"{bad.url}/v2/models/{name}/infer", "--model", "owner",
        "--budget", "40", "--batch-size", "4", "--decoy-ratio", "0", "--concurrency", "1", "--retries", "0",
        "--deadline", "0.5", "--evidence", str(tmp_path / "ev.json"),
    ])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    lines = r.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wm: error: suspect") and "Traceback" not in r.output
    spent = _spent(env) - before
    assert spent == 4  # the one batch that went out; the other nine were never sent
    assert not (tmp_path / "ev.json").exists()
