"""``wm guard`` in production: one or several worker processes on one listening socket.

:func:`run_guard` flushes whatever journal segments an earlier run left
(:func:`guard.service.recover_segments`), commits (or takes) the model's
current epoch, binds the socket, and serves. With one worker it serves in
this process. With N it holds the port with a socket that does not listen,
forks N workers, and each binds its own listening socket to that port with
``SO_REUSEPORT``: the kernel spreads new connections evenly over them (one
shared listening socket lets whichever worker wakes first accept a whole
burst). Each worker runs its own event loop, upstream connection pool,
journal segment, registry flusher and PRADA monitor, so no lock or file is
shared on the request path; the guard says it is ready once every worker
listens. SIGTERM or SIGINT stops every worker: each
answers what it has received, flushes its segment to the registry, and exits.
A worker that dies makes the others stop too, and :func:`run_guard` raises
with the reason. A worker whose parent has gone away stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from core.errors import InputError, WmError
from core.serving import bind, url_of
from guard.http import new_event_loop, serve
from guard.service import GuardOptions, GuardService, recover_segments
from registry.keys import OwnerKey

__all__ = ["run_guard"]

_ORPHAN_CHECK_SECONDS = 1.0


def _serve_worker(home: Path, registry_url: str, owner_key: OwnerKey, options: GuardOptions,
                  sock: socket.socket, segment: int, parent: int | None,
                  ready: Callable[[], None] | None = None) -> dict[str, int]:
    service = GuardService.open(home, registry_url, owner_key, options, segment=segment)
    try:
        service.start()
        loop = new_event_loop()
        stop = asyncio.Event()

        async def main() -> None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            if ready is not None:
                ready()
            if parent is not None:
                async def watch_parent() -> None:
                    while os.getppid() == parent:
                        await asyncio.sleep(_ORPHAN_CHECK_SECONDS)
                    stop.set()
                watcher = loop.create_task(watch_parent())
            try:
                await serve(service.proxy.handle, sock, stop)
            finally:
                if parent is not None:
                    watcher.cancel()
                await service.proxy.aclose()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    finally:
        service.close()
    return dict(service.proxy.counts)


def _fork_worker(home: Path, registry_url: str, owner_key: OwnerKey, options: GuardOptions,
                 held: socket.socket, segment: int) -> tuple[int, int]:
    """Fork worker ``segment``; ``(pid, read end of its pipe)``.

    The worker writes ``L`` on the pipe once it listens, then its tallies (JSON)
    or its error when it stops.
    """
    read, write = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker: never returns
        os.close(read)
        code = 0
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            host, port = held.getsockname()[:2]
            held.close()
            sock = bind(host, port, reuse_port=True)

            def listening() -> None:
                os.write(write, b"L")

            counts = _serve_worker(home, registry_url, owner_key, options, sock, segment, parent,
                                   listening)
            os.write(write, json.dumps(counts).encode())
        except BaseException as exc:  # reported to the parent, which raises it as one line
            message = str(exc) if isinstance(exc, WmError) else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):
                os.write(write, f"worker {segment}: {message}".encode()[:4000])
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(write)
    return pid, read


def run_guard(home: Path, registry_url: str, owner_key: OwnerKey, options: GuardOptions, *,
              host: str = "127.0.0.1", port: int = 8081, workers: int = 1,
              ready: Callable[[str], None] | None = None) -> dict[str, int]:
    """Serve the guard until SIGTERM or SIGINT; the request tallies of every worker together.

    Args:
        home: ``$WM_HOME``.
        registry_url: the registry.
        owner_key: the unlocked owner key.
        options: what to guard and how.
        host: address to bind.
        port: port to bind (0: the OS picks).
        workers: worker processes (1: serve in this process).
        ready: called with the guard's URL once it listens.

    Raises:
        InputError: bad options, the address cannot be bound, or a worker failed.
    """
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    recover_segments(home, registry_url, owner_key, options.model)
    # Open once here: validates the options and commits the epoch before any worker marks;
    # closed again before forking, so no worker inherits a database connection.
    probe = GuardService.open(home, registry_url, owner_key, options)
    probe.flusher.close()
    probe.journal.close()
    sock = bind(host, port, listen=workers == 1, reuse_port=workers > 1)
    try:
        url = url_of(sock)
        announce = (lambda: ready(url)) if ready is not None else None
        if workers == 1:
            return _serve_worker(home, registry_url, owner_key, options, sock, 0, None, announce)
        children = dict(_fork_worker(home, registry_url, owner_key, options, sock, i)
                        for i in range(workers))
        return _supervise(children, announce)
    finally:
        sock.close()


def _supervise(children: dict[int, int], ready: Callable[[], None] | None) -> dict[str, int]:
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    listening = {pid: os.read(fd, 1) == b"L" for pid, fd in children.items()}  # b"" if it died
    if ready is not None and all(listening.values()):
        ready()
    errors: list[str] = []
    counts: Counter[str] = Counter()
    try:
        remaining = set(children)
        while remaining:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in remaining:
                continue
            remaining.discard(pid)
            message = os.read(children[pid], 4096).decode(errors="replace")
            os.close(children[pid])
            if os.waitstatus_to_exitcode(status) == 0:
                counts.update(json.loads(message))
            else:
                errors.append(message or f"a worker exited with status {status}")
                if not stopping:
                    stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if errors:
        raise InputError("wm guard stopped: " + "; ".join(errors))
    return dict(counts)
