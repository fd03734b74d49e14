"""Running wm's HTTP servers (``wm serve``, the guard, witnesses): bind first, then serve.

Every server binds its listening socket itself before serving, so that the
address it prints or reports is the one it holds: port 0 lets the operating
system pick a free port, and nobody binds, closes and reuses a port (a race
under parallel tests). :func:`run_server` serves in the foreground (the CLI,
which prints :func:`url_of` first); :class:`BackgroundServer` serves in a
daemon thread (tests, the demo, benchmarks) and waits, with a deadline, until
uvicorn accepts connections.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from core.errors import InputError

__all__ = ["BackgroundServer", "bind", "run_server", "running_server", "url_of"]


def bind(host: str = "127.0.0.1", port: int = 0, *, listen: bool = True,
         reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: the OS picks a free one), listening unless told.

    A bound socket that does not listen holds its port and refuses connections:
    a server that is "down" at a known address, until :class:`BackgroundServer`
    is started on it. With ``reuse_port`` (``SO_REUSEPORT``), several processes
    bind the same port and the kernel spreads new connections over those that
    listen (the guard's workers).

    Raises:
        InputError: the address cannot be bound (in use, not local, not an address).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"cannot bind {host}:{port}: not an address ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _config(app: Any, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", **options)


def run_server(app: Any, sock: socket.socket, **options: Any) -> None:
    """Serve ``app`` on ``sock`` in the foreground until SIGINT or SIGTERM.

    Args:
        app: the ASGI application.
        sock: from :func:`bind`.
        **options: further ``uvicorn.Config`` settings (``timeout_keep_alive``, ...).
    """
    uvicorn.Server(_config(app, **options)).run(sockets=[sock])


class BackgroundServer:
    """Runs an ASGI app with uvicorn in a daemon thread (tests, the demo, benchmarks).

    Args:
        app: the ASGI application.
        host: address to bind.
        port: port to bind; 0 picks a free one (read :attr:`port` or :attr:`url`).
        sock: a socket from :func:`bind` to serve on instead (``host`` and ``port`` unused).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 sock: socket.socket | None = None) -> None:
        self._sock = sock if sock is not None else bind(host, port)
        self._sock.listen(2048)
        self._server = uvicorn.Server(_config(app))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.host = str(self._sock.getsockname()[0])
        self.port = int(self._sock.getsockname()[1])

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start serving; returns once uvicorn accepts connections.

        Raises:
            InputError: it did not start within ``timeout`` seconds, or its thread died.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._sock.close()
                raise InputError(f"the server could not start on {self.url}")
            if time.monotonic() > deadline:
                self.stop()
                raise InputError(f"the server did not start within {timeout:g} s")
            time.sleep(0.005)
        return self

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return url_of(self._sock)

    def stop(self) -> None:
        """Stop serving, wait for the thread, release the port."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[BackgroundServer]:
    """``with running_server(app) as srv: ... srv.url ...`` (port 0 unless told otherwise)."""
    srv = BackgroundServer(app, host, port).start()
    try:
        yield srv
    finally:
        srv.stop()
