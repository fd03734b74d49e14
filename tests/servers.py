"""Real servers for tests, on ports the OS picks, waited for with a deadline.

Two ways to run one, both without binding, closing and reusing a port (a race
under ``pytest -n 2``):

- in this process: :func:`core.serving.running_server` (re-exported here) runs
  an ASGI app on a port-0 socket in a thread and returns once it accepts;
- as a ``wm`` subprocess: :func:`wm_server` starts ``wm ... --port 0`` (``wm
  serve``, ``wm guard``, ``wm witness serve``: any command that prints
  ``... at http://HOST:PORT...`` on stderr once bound) and reads the URL it
  printed, failing the test with the command's output if it does not come up
  before the deadline; :func:`process_server` does the same for any other
  server command (MLServer, say) given how to find its URL.

For a server that must be down at a known address first, bind a socket that
does not listen (:func:`core.serving.bind` with ``listen=False``: connections
are refused) and start :class:`core.serving.BackgroundServer` on it later.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from core.serving import BackgroundServer, bind, running_server

__all__ = [
    "WM",
    "BackgroundServer",
    "WmProcess",
    "bind",
    "process_server",
    "running_server",
    "wm_server",
]

WM = [sys.executable, "-c", "from cli.main import main; main()"]
"""The ``wm`` command in this interpreter (no console script needed)."""
_URL = re.compile(r"\bat (https?://[^\s/]+)")


@dataclass
class WmProcess:
    """A running ``wm`` server: its process, base URL, and what it wrote on stderr so far."""

    proc: subprocess.Popen[bytes]
    url: str
    _lines: list[str] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        """Everything the process wrote on stderr so far."""
        return "".join(self._lines)


def _drain(proc: subprocess.Popen[bytes], lines: list[str], found: threading.Event,
           url: list[str], pattern: re.Pattern[str]) -> None:
    assert proc.stderr is not None
    for raw in iter(proc.stderr.readline, b""):
        line = raw.decode("utf-8", "replace")
        lines.append(line)
        m = pattern.search(line)
        if m and not url:
            url.append(m.group(1))
            found.set()
    found.set()  # the process ended (or closed stderr): stop waiting


@contextmanager
def process_server(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                   deadline: float = 300.0, url: re.Pattern[str] = _URL,
                   cwd: str | None = None) -> Iterator[WmProcess]:
    """Run a server command that picks its own port until the block ends.

    Args:
        argv: the command.
        env: extra environment variables.
        deadline: seconds to wait for the bound URL on stderr (a server imports torch
            first: seconds on an idle machine, minutes on a loaded one).
        url: finds the base URL (its group 1) in a line of the command's stderr.
        cwd: the working directory.

    Yields:
        The process and the base URL (``http://HOST:PORT``) it printed.
    """
    proc = subprocess.Popen(list(argv), env={**os.environ, **(env or {})}, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[str] = []
    found = threading.Event()
    got: list[str] = []
    reader = threading.Thread(target=_drain, args=(proc, lines, found, got, url), daemon=True)
    reader.start()
    try:
        if not found.wait(deadline) or not got:
            proc.kill()
            proc.wait(10)
            reader.join(5)
            pytest.fail(f"`{' '.join(argv)}` did not print its URL within {deadline:g} s "
                        f"(exit {proc.poll()}): {''.join(lines)[-2000:]}")
        yield WmProcess(proc, got[0], lines)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        reader.join(5)


@contextmanager
def wm_server(args: Sequence[str], *, env: Mapping[str, str] | None = None,
              deadline: float = 300.0) -> Iterator[WmProcess]:
    """Run ``wm ARGS`` (which must include ``--port 0``) until the block ends; see :func:`process_server`."""
    with process_server([*WM, *args], env=env, deadline=deadline) as srv:
        yield srv
