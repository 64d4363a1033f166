"""Start a throw-away `soma serve` in its own process for a benchmark, and stop it after."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def served(home: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[Served]:
    """A `soma serve` on a free loopback port with SOMA_HOME=home (stopped with SIGTERM after)."""
    port = free_port()
    full_env = {**os.environ, **(env or {}), "SOMA_HOME": str(home), "SOMA_PORT": str(port),
                "SOMA_HOST": "127.0.0.1"}
    full_env.pop("SOMA_DATABASE_URL", None)
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "serve.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "somastack.cli.main", "serve"], env=full_env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"soma serve exited with {proc.returncode}; see {home}/serve.log")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"soma serve not ready after {timeout}s; see {home}/serve.log")
            time.sleep(0.2)
        yield Served(url, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
