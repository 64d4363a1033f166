"""A lean HTTP/1.1 keep-alive client for load generation: JSON in, JSON out, one connection each.

The benchmark's clients run on the same two cores as the server they measure, so their own CPU
shows up as the server's latency. httpx spent 1.2-1.8 ms of CPU per request (more than FastAPI
and uvicorn together on a small route); this client spends a fraction of that. It speaks only
what `soma serve` answers: a status line, headers, and a Content-Length body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit


class HTTPStatusError(RuntimeError):
    """The server answered with a status outside 2xx."""


class Connection:
    """One persistent connection; requests on it are sequential."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str,
                 headers: dict[str, str]) -> None:
        self.reader, self.writer = reader, writer
        fixed = {"Host": host, "Content-Type": "application/json", **headers}
        self.header_block = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode()

    @classmethod
    async def open(cls, url: str, headers: dict[str, str]) -> Connection:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"expected http://host:port, got {url!r}")
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, parts.netloc, headers)

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST a JSON body and return the decoded JSON answer; HTTPStatusError unless 2xx."""
        data = json.dumps(body).encode()
        self.writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\n" + self.header_block
                          + b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status, length = int(status_line.split()[1]), None
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ConnectionError("the answer has no Content-Length")
        answer = await self.reader.readexactly(length)
        if not 200 <= status < 300:
            raise HTTPStatusError(f"{status} for POST {path}: {answer[:300]!r}")
        return json.loads(answer)

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST a JSON body and yield the events of the SSE answer (chunked), each `data:` line's
        JSON object, as they arrive; HTTPStatusError unless 2xx."""
        data = json.dumps(body).encode()
        self.writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\n" + self.header_block
                          + b"Accept: text/event-stream\r\nContent-Length: "
                          + str(len(data)).encode() + b"\r\n\r\n" + data)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status, chunked, length = int(status_line.split()[1]), False, 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"transfer-encoding":
                chunked = value.strip().lower() == b"chunked"
            elif name.strip().lower() == b"content-length":
                length = int(value)
        if not 200 <= status < 300 or not chunked:
            answer = await self.reader.readexactly(length)
            raise HTTPStatusError(f"{status} for POST {path} (not an event stream): {answer[:300]!r}")
        pending = b""
        while size := int((await self.reader.readline()).split(b";")[0], 16):
            pending += (await self.reader.readexactly(size + 2))[:-2]
            *events, pending = pending.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        yield json.loads(line[5:])
        await self.reader.readline()  # the blank line after the last chunk

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
