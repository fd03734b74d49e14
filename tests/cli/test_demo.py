"""`wm demo` guards its output directory (the full run is `make demo`, about 3 minutes)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cli.main import _register_commands, wm

_register_commands()


def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(wm, ["--home", str(tmp_path / "h"), "demo", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert f"wm: error: {tmp_path} is not empty and was not made by `wm demo`" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
