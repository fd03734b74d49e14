"""Worker processes that parse large request bodies, so that a server's event loop never does.

CPython's JSON parser holds the GIL for a whole document (about 1.5 s for 64
MB), so a parse on a worker *thread* stalls the event loop just the same: a
large body has to be parsed in another process. Each worker is a spawned
interpreter (a fork after torch's threads is unsafe) on a pipe. The body goes
down the pipe as raw bytes (``send_bytes`` writes the server's own buffer: no
pickled copy), the worker decodes it to text and lets go of the bytes before
parsing, so at its peak it holds the text and the parsed document only, and
the parsed request comes back (the inputs as one float32 array). A worker that
dies is replaced at the next request; the request it was parsing gets a 500.
"""

from __future__ import annotations

import multiprocessing
import queue
from multiprocessing.connection import Connection
from typing import Any

from verifier.wire.inference import InferenceRequest, RequestError, Route

__all__ = ["ParseWorkers"]


def _serve(conn: Connection) -> None:
    """The worker's loop: ``(route, input_shape, max_batch)``, then the body's bytes; the result."""
    from verifier.wire.incoming import parse_request

    while True:
        try:
            route, input_shape, max_batch = conn.recv()
            data: Any = conn.recv_bytes()
        except (EOFError, OSError):
            return
        result: tuple[bool, Any]
        try:
            text = str(data, "utf-8")
        except UnicodeDecodeError as exc:
            result = (False, RequestError(f"request body is not valid JSON: {exc}"))
        else:
            del data  # the text alone from here on
            try:
                result = (True, parse_request(route, text, input_shape, max_batch=max_batch))
            except RequestError as exc:
                result = (False, exc)
            except MemoryError:
                result = (False, RequestError("server out of memory parsing the body; retry", 503))
        try:
            conn.send(result)
        except (EOFError, OSError):
            return


class _Worker:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child,), daemon=True, name="wm-parse")
        self.process.start()
        child.close()

    def parse(self, route: Route, body: bytes | bytearray, input_shape: tuple[int, ...],
              max_batch: int) -> tuple[bool, Any]:
        self.conn.send((route, input_shape, max_batch))
        self.conn.send_bytes(body)
        reply: tuple[bool, Any] = self.conn.recv()
        return reply

    def close(self) -> None:
        self.conn.close()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class ParseWorkers:
    """Up to ``count`` parsing processes, started when first needed; thread-safe.

    Args:
        count: worker processes (each parses one body at a time).
    """

    def __init__(self, count: int) -> None:
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(count):
            self._idle.put(None)  # a slot; its process starts on first use

    def parse(self, route: Route, body: bytes | bytearray, input_shape: tuple[int, ...],
              max_batch: int) -> InferenceRequest:
        """Parse ``body`` in a worker (blocking: call it from a thread).

        Raises:
            RequestError: as :func:`verifier.wire.incoming.parse_request`; 500 if the worker died.
        """
        worker = self._idle.get()
        try:
            if worker is None or not worker.process.is_alive():
                if worker is not None:
                    worker.close()
                worker = _Worker()
            try:
                ok, value = worker.parse(route, body, input_shape, max_batch)
            except (EOFError, OSError) as exc:
                worker.close()
                worker = None
                raise RequestError("the server's parsing worker failed on this body", 500) from exc
        finally:
            self._idle.put(worker)
        if not ok:
            raise value
        request: InferenceRequest = value
        return request

    def close(self) -> None:
        """Stop the worker processes that are idle (all of them once no parse is running)."""
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            if worker is not None:
                worker.close()
