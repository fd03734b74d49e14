"""The guard's upstream client against upstreams that misbehave, each served for real on loopback.

A raw asyncio server answers by path: chunked, connection-delimited, a 1 byte/s
dribble, an oversized answer, garbage, and connections closed while idle.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from guard.upstream import Upstream, UpstreamError, UpstreamTimeoutError

OK = b'{"ok": true}'


class _Upstream:
    """Counts connections; answers each request according to its path."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if not await self.answer(path, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(self, path: bytes, writer: asyncio.StreamWriter) -> bool:
        """Write the answer; whether the connection stays open."""
        if path == b"/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"5\r\n{\"ok\"\r\n7\r\n: true}\r\n0\r\n\r\n")
        elif path == b"/close-delimited":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + OK)
            await writer.drain()
            return False
        elif path == b"/dribble":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
            for _ in range(100):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(1)
        elif path == b"/huge":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n" + b" " * 2_000_000)
        elif path == b"/garbage":
            writer.write(b"SMTP ready\r\n\r\n")
        elif path == b"/idle-close":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n" + OK)
            await writer.drain()
            await asyncio.sleep(0.1)
            return False  # closes an idle keep-alive connection, as servers do after a timeout
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n" + OK)
        await writer.drain()
        return True


@asynccontextmanager
async def _serving() -> AsyncIterator[tuple[_Upstream, str]]:
    up = _Upstream()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(up.handle, sock=sock)
    try:
        yield up, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.close()


def _run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_keep_alive_connections_are_reused_and_answers_of_every_framing_read() -> None:
    async def main() -> None:
        async with _serving() as (up, url):
            client = Upstream(url, timeout=5)
            for _ in range(20):
                a = await client.request(b"POST", b"/plain", [], b"{}")
                assert (a.status, a.body) == (200, OK)
            assert up.connections == 1
            assert (await client.request(b"GET", b"/chunked", [], b"")).body == OK
            assert (await client.request(b"GET", b"/close-delimited", [], b"")).body == OK
            assert (await client.request(b"GET", b"/plain", [], b"")).body == OK  # a fresh connection
            assert up.connections == 2
            client.close()
    _run(main())


def test_a_connection_the_upstream_closed_while_idle_is_not_reused() -> None:
    async def main() -> None:
        async with _serving() as (up, url):
            client = Upstream(url, timeout=5)
            for _ in range(3):
                assert (await client.request(b"GET", b"/idle-close", [], b"")).body == OK
                await asyncio.sleep(0.3)  # the upstream has closed it meanwhile
            assert up.connections == 3
            client.close()
    _run(main())


def test_one_deadline_covers_the_whole_answer_even_a_dribbling_one() -> None:
    async def main() -> None:
        async with _serving() as (_, url):
            client = Upstream(url, timeout=1.5)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(UpstreamTimeoutError, match=r"no complete answer within 1\.5 s"):
                await client.request(b"GET", b"/dribble", [], b"")
            assert loop.time() - start < 10  # bytes kept arriving; the deadline still held
    _run(main())


@pytest.mark.parametrize(("path", "message"), [
    (b"/huge", "answer over 1000000 bytes"),
    (b"/garbage", "malformed answer"),
])
def test_oversized_and_malformed_answers_are_errors(path: bytes, message: str) -> None:
    async def main() -> None:
        async with _serving() as (_, url):
            client = Upstream(url, timeout=5, max_answer=1_000_000)
            with pytest.raises(UpstreamError, match=message):
                await client.request(b"GET", path, [], b"")
    _run(main())


def test_a_dead_upstream_and_a_bad_target_are_errors() -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        client = Upstream(f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=2)
        with pytest.raises(UpstreamError, match="cannot connect"):
            await client.request(b"GET", b"/", [], b"")
        with pytest.raises(UpstreamError, match="must start with '/'"):
            await client.request(b"GET", b"@evil:80/", [], b"")
        sock.close()
    _run(main())
