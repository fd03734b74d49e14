"""The README's "your own model and data" and "from Python" examples run as written.

The marked Python block is written to ``your_model.py`` and run in a fresh
process; the shell block's ``wm`` commands run through the real command line
in the same directory (``wm serve`` as its app on a port the OS picks, whose
URL replaces ``http://127.0.0.1:8080``); the verification must say
``owned``. Then the "from Python" block verifies the same suspect again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import _register_commands, wm
from core.modelio import load_model
from core.serving import running_server
from verifier.server import ServedModel, build_app

_register_commands()
README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_URL = "http://127.0.0.1:8080"


def _block(name: str, language: str) -> str:
    found = re.search(rf"<!-- readme-example: {name} -->\n```{language}\n(.*?)```", README.read_text(),
                      re.S)
    assert found is not None, f"README.md has no {language} block marked readme-example: {name}"
    return found.group(1)


def _commands(block: str) -> list[list[str]]:
    return [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.split("#")[0].strip()]


def test_own_model_and_python_examples_run_as_written(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "your_model.py").write_text(_block("own-model", "python"))
    commands = _commands(_block("own-model-cli", "bash"))
    assert commands[0] == ["python", "your_model.py"] and all(c[0] == "wm" for c in commands[1:])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "your_model.py"], cwd=tmp_path, env=env, check=True, timeout=1800)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WM_PASSPHRASE", "readme example")
    monkeypatch.delenv("WM_REGISTRY_URL", raising=False)
    runner = CliRunner()
    with ExitStack() as stack:
        url = ""
        for argv in commands[1:]:
            if argv[1] == "serve":  # `wm serve MODEL --port 8080 &`
                assert argv[-1] == "&" and argv[argv.index("--port") + 1] == "8080"
                app = build_app({Path(argv[2]).stem: ServedModel(load_model(argv[2]), "labels")})
                url = stack.enter_context(running_server(app)).url
                continue
            if argv[1] == "verify":
                argv = [a.replace(EXAMPLE_URL, url) for a in argv] + ["--json"]
            result = runner.invoke(wm, argv[1:])
            assert result.exit_code == 0, (argv, result.output)
        out = json.loads(result.stdout)
        assert out["verdict"] == "owned" and out["p_value"] <= 1e-6
        python = _block("from-python", "python").replace(EXAMPLE_URL, url)
        printed = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True,
                                 env={**env, "WM_HOME": str(tmp_path / "home"),
                                      "WM_PASSPHRASE": "readme example"}, check=True, timeout=1800)
    verdict, p_value, evidence = printed.stdout.split()
    assert verdict == "owned" and float(p_value) <= 1e-6 and Path(evidence).is_file()
