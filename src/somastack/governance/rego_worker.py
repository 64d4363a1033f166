"""Rego evaluation in child processes, so that a crash or a runaway policy costs one worker.

regopy (rego-cpp) can crash the interpreter on some inputs (for instance the `with` keyword in
this version), and a Python thread cannot be stopped; a process can be killed and replaced.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
from dataclasses import dataclass
from typing import IO, Any


class RegoFailure(Exception):
    """Evaluation did not produce a value: `kind` is compile, runtime, crash or timeout."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def evaluate(modules: dict[str, str], input_json: str, query: str) -> tuple[str, Any]:
    """Run one query in this process: ('ok', value or None if undefined) or (kind, message)."""
    from regopy import Interpreter, RegoError

    rego = Interpreter()
    try:
        for name, source in modules.items():
            rego.add_module(name, source)
        rego.set_input_term(input_json)
        out = rego.query(query)
    except RegoError as exc:
        return "compile", str(exc)
    if not out.ok():
        return "runtime", str(out)
    if str(out) == "undefined":
        return "ok", None
    return "ok", json.loads(out.binding("x").json())


def _serve() -> None:
    """Child main: one JSON request per line on stdin, one JSON answer per line on the reply fd."""
    reply = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # rego-cpp prints diagnostics on stdout; the answer carries them instead
    for line in sys.stdin:
        modules, input_json, query = json.loads(line)
        reply.write(json.dumps(evaluate(modules, input_json, query)) + "\n")
        reply.flush()


@dataclass
class _Worker:
    process: subprocess.Popen[str]

    @classmethod
    def start(cls) -> _Worker:
        process = subprocess.Popen(
            [sys.executable, "-m", "somastack.governance.rego_worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        return cls(process)

    @property
    def stdin(self) -> IO[str]:
        assert self.process.stdin is not None
        return self.process.stdin

    @property
    def stdout(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        self.stdin.close()
        self.stdout.close()


class RegoPool:
    """A few evaluator processes; each query has a deadline, after which its worker is replaced."""

    def __init__(self, size: int, timeout_s: float) -> None:
        self.size, self.timeout_s = max(1, size), timeout_s
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: list[_Worker] = []

    async def _queue(self) -> asyncio.Queue[_Worker]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.size):
                worker = await asyncio.to_thread(_Worker.start)
                self._all.append(worker)
                self._idle.put_nowait(worker)
        return self._idle

    def _roundtrip(self, worker: _Worker, payload: list[Any]) -> tuple[str, Any]:
        worker.stdin.write(json.dumps(payload) + "\n")
        worker.stdin.flush()
        ready, _, _ = select.select([worker.stdout], [], [], self.timeout_s)
        if not ready:
            return "timeout", f"policy evaluation took longer than {self.timeout_s} s"
        line = worker.stdout.readline()
        if not line:
            return "crash", "the policy evaluator crashed"
        kind, value = json.loads(line)
        return kind, value

    async def query(self, modules: dict[str, str], input_value: dict[str, Any], query: str) -> Any:
        """The value bound to `x` by `query` (None when undefined); RegoFailure otherwise."""
        idle = await self._queue()
        worker = await idle.get()
        try:
            kind, value = await asyncio.to_thread(
                self._roundtrip, worker, [modules, json.dumps(input_value), query])
        except (OSError, ValueError):
            kind, value = "crash", "the policy evaluator crashed"
        if kind in ("timeout", "crash"):
            self._all.remove(worker)
            await asyncio.to_thread(worker.stop)
            worker = await asyncio.to_thread(_Worker.start)
            self._all.append(worker)
        idle.put_nowait(worker)
        if kind != "ok":
            raise RegoFailure(kind, str(value))
        return value

    def close(self) -> None:
        for worker in self._all:
            worker.stop()
        self._all.clear()
        self._idle = None


if __name__ == "__main__":
    _serve()
