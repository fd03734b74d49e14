"""``wm verify`` against a real MLServer, as it is usually deployed (issue 11).

MLServer with a custom runtime (``mlserver_runtime.py``) declares no inputs or
outputs: its metadata is ``{"inputs": [], "outputs": []}``, and it answers labels
as ``[N, 1]`` INT64 with its NumPy codec. ``wm verify`` must still find an exact
copy of the watermarked model ``owned`` and an independently trained model
``not_owned``. MLServer's own pins clash with wm's, so it lives in a venv of its
own (``make mlserver`` builds ``.venv-mlserver``; ``$WM_MLSERVER_VENV`` names
another); without one these tests skip saying so. The same metadata served by a
stand-in is tested without MLServer in ``test_protocols.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from click.testing import CliRunner

from core.data import load_digits
from core.modelio import save_model
from core.training import train_new
from tests.servers import process_server
from watermark import WatermarkSecret, write_secret

from .helpers import OWNER_KEY, digits_watermark, watermarked_cnn

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("WM_MLSERVER_VENV", ROOT / ".venv-mlserver"))
RUNTIME = Path(__file__).with_name("mlserver_runtime.py")


def _mlserver() -> Path:
    binary = VENV / "bin" / "mlserver"
    if not binary.exists():
        pytest.skip(f"MLServer is not installed in {VENV} (`make mlserver` builds it; "
                    "$WM_MLSERVER_VENV names another venv)")
    return binary


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The watermarked owner CNN (with its .wmkey) and an independent CNN, trained on digits."""
    _mlserver()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        splits = load_digits()
        probes = digits_watermark()
        owner = watermarked_cnn(probes)
        independent = train_new("cnn", splits.train.x, splits.train.y, num_classes=10, epochs=10, seed=7)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("mlserver-models")
    paths = {name: save_model(m, out / f"{name}.pt2", input_shape=splits.input_shape, num_classes=10,
                              arch="cnn", data="digits")
             for name, m in (("owner", owner), ("independent", independent))}
    write_secret(out / "owner.pt2.wmkey", WatermarkSecret(key=OWNER_KEY, probes=probes))
    return paths


@pytest.fixture(scope="module")
def mlserver(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MLServer serving the owner model as ``copy`` and the other as ``independent``; its base URL."""
    binary = _mlserver()
    repo = tmp_path_factory.mktemp("mlserver-repo")
    for name, source in (("copy", models["owner"]), ("independent", models["independent"])):
        folder = repo / name
        folder.mkdir()
        shutil.copy(RUNTIME, folder / "mlserver_runtime.py")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "mlserver_runtime.TorchExportRuntime",
            "parameters": {"uri": str(source)}}))
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": 0, "grpc_port": 0, "metrics_endpoint": None,
        "parallel_workers": 0}))
    with process_server([str(binary), "start", str(repo)], deadline=600, cwd=str(repo),
                        url=re.compile(r"Uvicorn running on (http://[^\s/]+)")) as srv:
        yield srv.url


def test_mlserver_declares_no_inputs_or_outputs(mlserver: str) -> None:
    meta = httpx.get(f"{mlserver}/v2/models/copy", timeout=30).json()
    assert meta["name"] == "copy" and meta.get("inputs", []) == [] and meta.get("outputs", []) == []


def test_wm_verify_judges_the_copy_owned_and_the_independent_model_not(
    mlserver: str, models: dict[str, Path], tmp_path: Path
) -> None:
    from cli.main import _register_commands, wm

    _register_commands()
    env = {"WM_HOME": str(tmp_path / "home"), "WM_PASSPHRASE": "pw", "WM_REGISTRY_URL": ""}
    runner = CliRunner(env=env)
    assert runner.invoke(wm, ["keygen", "--name", "alice"]).exit_code == 0
    assert runner.invoke(wm, ["register", str(models["owner"]), "--name", "owner"]).exit_code == 0
    results = {}
    for name in ("copy", "independent"):
        r = runner.invoke(wm, ["verify", "--suspect", f"{mlserver}/v2/models/{name}/infer",
                               "--model", "owner", "--budget", "60", "--json",
                               "--evidence", str(tmp_path / f"{name}.json")])
        results[name] = (r.exit_code, json.loads(r.output) if r.output.startswith("{") else r.output)
    (copy_code, copy), (ind_code, ind) = results["copy"], results["independent"]
    assert copy_code == 0 and copy["verdict"] == "owned" and copy["p_value"] <= 1e-6, copy
    assert "declares no inputs: sending 'input-0'" in copy["detected"]
    assert ind_code == 1 and ind["verdict"] == "not_owned", ind
