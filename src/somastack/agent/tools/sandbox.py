"""Run untrusted code in a separate process with limits, streaming its output.

What is enforced, and by what:
- resource limits (setrlimit in the child before exec): CPU seconds, address space, open files,
  processes of the sandbox user, size of any file written, no core dumps;
- wall-clock timeout and an output cap (stdout + stderr) enforced here: on either the process
  tree is killed and a typed error raised;
- a throw-away working directory (removed afterwards) and a scrubbed environment;
- isolation "namespace" (root, or unprivileged user namespaces): `unshare` gives the process its
  own network namespace (no interfaces but a down loopback: no network at all), PID namespace
  (killing it kills every descendant; nothing can outlive the call; its /proc shows only the
  sandbox's processes, not the server's environment) and mount namespace, in which the server's
  private directories ($SOMA_HOME: admin key, signing keys, the embedded database; the server
  user's home) are covered by an empty, inaccessible tmpfs; as root, `setpriv` then drops to an
  unprivileged uid with no groups, no capabilities and no_new_privs. (Without root the sandbox
  runs as the server's own user inside a user namespace: covering those directories is what keeps
  it from reading them.);
- isolation "rlimit" (fallback when namespaces are unavailable): limits, timeout, cap, scrubbed
  env and the process group are still enforced; the network is NOT blocked and a descendant that
  leaves the process group can survive. `SOMA_SANDBOX_ISOLATION=namespace` refuses to run then.
With namespaces the temp directory (where working directories live) is a private tmpfs holding
only this run's working directory, at the same path in every run (`<tmp>/soma-sandbox`):
concurrent runs (other tenants' tools) cannot see or change each other's files, and what a
program prints (a traceback's file names) does not depend on a random directory name, so the same
turn gives the same answer. Otherwise the filesystem is the host's, read-only to the sandbox user
except its working directory.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from somastack.config import Settings
from somastack.errors import InvalidInput, SandboxUnavailable, ToolOutputTooLarge, ToolTimeout

PYTHON = "<python>"  # in SandboxJob.argv: replaced by the sandbox's interpreter
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
_READ = 64 * 1024
_probed: dict[bool, bool] = {}


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: int = 5
    memory_mb: int = 256
    max_fds: int = 64
    max_procs: int = 32
    file_mb: int = 16
    timeout_s: float = 10.0
    output_bytes: int = 1024 * 1024

    @classmethod
    def from_settings(cls, s: Settings) -> SandboxLimits:
        return cls(s.sandbox_cpu_s, s.sandbox_memory_mb, s.sandbox_max_fds, s.sandbox_max_procs,
                   s.sandbox_file_mb, s.sandbox_timeout_s, s.sandbox_output_bytes)


@dataclass(frozen=True)
class SandboxJob:
    """What to run: argv (PYTHON is replaced), files to put in the working dir, stdin bytes."""

    argv: list[str]
    files: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""


@dataclass(frozen=True)
class SandboxOutcome:
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: float
    isolation: str


INSIDE = "soma-sandbox"  # the working directory's name inside a namespace, in the temp directory
_UNSHARE = ["unshare", "--mount", "--mount-proc", "--net", "--pid", "--fork", "--kill-child"]
# The namespace's first process covers each directory given before the first `--` with an empty
# tmpfs that nobody may enter; then gives the temp directory (where every run's working
# directory lives) a fresh, private tmpfs holding only this run's working directory (its cwd,
# bind-mounted at the fixed INSIDE path: `--no-canonicalize`, or mount would resolve "." by name,
# into the new tmpfs), so concurrent runs cannot see each other; then becomes the rest.
_COVER = ["/bin/sh", "-c", 'set -e; while [ "$1" != -- ]; do '
          'mount -t tmpfs -o size=4k,mode=000 soma-hidden "$1"; shift; done; shift; '
          'mount -t tmpfs -o size=64m,mode=1777 soma-tmp "$1"; mkdir -p "$2"; '
          'mount --no-canonicalize --bind . "$2"; cd "$2"; unset OLDPWD; shift 2; exec "$@"',
          "sandbox-cover"]


def _namespaces_work(as_root: bool) -> bool:
    """Whether `unshare` can create mount + network + PID namespaces here (probed once per
    process)."""
    if as_root not in _probed:
        argv = [*_UNSHARE, "true"]
        if not as_root:
            argv[1:1] = ["--user", "--map-root-user"]
        try:
            ok = subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        _probed[as_root] = ok
    return _probed[as_root]


def hidden_dirs(settings: Settings, keep: list[Path]) -> list[Path]:
    """The server's private directories that exist, except any that holds a path in `keep`
    (the interpreter, the working directories): $SOMA_HOME and the server user's home."""
    out: list[Path] = []
    for d in (settings.home_dir, Path.home()):
        d = d.resolve()
        if d.is_dir() and d != Path("/") and d not in out \
                and not any(k == d or d in k.parents for k in keep):
            out.append(d)
    return out


def _default_python() -> str:
    """A system interpreter the unprivileged sandbox user can execute (not one under /root)."""
    return shutil.which("python3", path=_SYSTEM_PATH) or sys.executable


class Sandbox:
    """Runs SandboxJobs under the configured limits and isolation."""

    def __init__(self, settings: Settings, limits: SandboxLimits | None = None) -> None:
        mode = settings.sandbox_isolation
        if mode not in ("auto", "namespace", "rlimit"):
            raise InvalidInput("expected auto, namespace or rlimit", field="sandbox_isolation")
        self.limits = limits or SandboxLimits.from_settings(settings)
        self.as_root = os.geteuid() == 0
        self.uid = settings.sandbox_uid
        self.python = settings.sandbox_python or _default_python()
        namespaces = mode != "rlimit" and shutil.which("unshare") is not None \
            and shutil.which("mount", path=_SYSTEM_PATH) is not None and _namespaces_work(self.as_root)
        if mode == "namespace" and not namespaces:
            raise SandboxUnavailable("mount/network/PID namespaces (unshare, mount) are not "
                                     "available on this machine", field="sandbox_isolation")
        if namespaces and self.as_root and shutil.which("setpriv") is None:
            raise SandboxUnavailable("`setpriv` is needed to drop privileges in the sandbox",
                                     field="sandbox_isolation")
        self.isolation = "namespace" if namespaces else "rlimit"
        python = Path(shutil.which(self.python) or self.python).resolve()
        self.tmp = Path(tempfile.gettempdir()).resolve()  # where working directories are made
        self.hidden = hidden_dirs(settings, [python, self.tmp])

    def inside(self, work: Path) -> Path:
        """Where the program sees its working directory: a fixed path in a namespace."""
        return self.tmp / INSIDE if self.isolation == "namespace" else work

    def _argv(self, job: SandboxJob, work: Path) -> list[str]:
        argv = [self.python if a == PYTHON else a for a in job.argv]
        if self.isolation == "rlimit":
            return argv
        # `sh` is the namespace's init (the processes before it exec into it): it reports a
        # signal death as exit 128+n (unshare itself cannot re-raise it), and when it exits the
        # kernel kills whatever the job left behind.
        init = ["/bin/sh", "-c", '"$@"; exit $?', "sandbox-init", *argv]
        cover = [*_COVER, *map(str, self.hidden), "--", str(self.tmp), str(self.inside(work))]
        if not self.as_root:
            return [*_UNSHARE[:1], "--user", "--map-root-user", *_UNSHARE[1:], "--", *cover, *init]
        drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                "--no-new-privs", "--bounding-set=-all", "--"]
        return [*_UNSHARE, "--", *cover, *drop, *init]

    def _preexec(self) -> Callable[[], None]:
        lim = self.limits
        drop_here = self.isolation == "rlimit" and self.as_root
        uid = self.uid

        def apply() -> None:  # runs in the child between fork and exec
            # soft = hard: the kernel SIGKILLs at the limit (SIGXCPU could be caught or ignored)
            resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_s, lim.cpu_s))
            mem = lim.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim.max_fds, lim.max_fds))
            resource.setrlimit(resource.RLIMIT_NPROC, (lim.max_procs, lim.max_procs))
            fsize = lim.file_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if drop_here:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        return apply

    def _workdir(self, job: SandboxJob) -> Path:
        work = Path(tempfile.mkdtemp(prefix="soma-sbx-", dir=self.tmp))
        for name, text in job.files.items():
            target = (work / name).resolve()
            if work not in target.parents:
                raise InvalidInput(f"file {name!r} escapes the working directory", field="files")
            target.write_text(text)
        if self.as_root:
            for p in (work, *work.iterdir()):
                os.chown(p, self.uid, self.uid)
        return work

    async def run(self, job: SandboxJob) -> AsyncGenerator[str | SandboxOutcome, None]:
        """Yield stdout text as it arrives, then one SandboxOutcome; kill and raise on a limit."""
        work = self._workdir(job)
        home = str(self.inside(work))
        env = {"PATH": _SYSTEM_PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *self._argv(job, work), cwd=work, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=self._preexec(), start_new_session=True)
        budget = _OutputBudget(self.limits.output_bytes, proc)
        err_task = asyncio.create_task(budget.drain_stderr(proc.stderr))
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(job.stdin)
            proc.stdin.close()
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            out: list[str] = []
            while True:
                chunk = await asyncio.wait_for(proc.stdout.read(_READ), self._left(started))
                budget.spend(len(chunk))
                if budget.over:
                    raise budget.error()
                text = decoder.decode(chunk, final=not chunk)
                if text:
                    out.append(text)
                    yield text
                if not chunk:
                    break
            code = await asyncio.wait_for(proc.wait(), self._left(started))
            await err_task
            if budget.over:
                raise budget.error()
            self._check_cpu(code)
            yield SandboxOutcome(code, "".join(out), budget.stderr(),
                                 round((time.monotonic() - started) * 1000, 3), self.isolation)
        except TimeoutError as exc:
            raise ToolTimeout(f"killed after the {self.limits.timeout_s:g} s wall-clock limit",
                              field="timeout") from exc
        finally:
            _kill(proc)
            await _reap(proc, err_task)
            shutil.rmtree(work, ignore_errors=True)

    def _left(self, started: float) -> float:
        return max(self.limits.timeout_s - (time.monotonic() - started), 0.001)

    def _check_cpu(self, code: int) -> None:
        # We SIGKILL only on timeout or output cap (both raised before this point), and memory
        # exhaustion under RLIMIT_AS fails allocations instead of killing: so this is the CPU cap.
        if code in (-signal.SIGKILL, 128 + signal.SIGKILL):
            raise ToolTimeout(f"killed at the {self.limits.cpu_s} s CPU limit", field="cpu")


class _OutputBudget:
    """Bytes of output allowed across stdout and stderr; past the cap the process is killed."""

    def __init__(self, cap: int, proc: asyncio.subprocess.Process) -> None:
        self.cap = cap
        self.used = 0
        self.proc = proc
        self._stderr = bytearray()

    @property
    def over(self) -> bool:
        return self.used > self.cap

    def spend(self, n: int) -> None:
        self.used += n
        if self.over:
            _kill(self.proc)

    def error(self) -> ToolOutputTooLarge:
        return ToolOutputTooLarge(f"output passed the {self.cap}-byte cap; the tool was killed",
                                  field="output")

    async def drain_stderr(self, stream: asyncio.StreamReader | None) -> None:
        """Read stderr to the end, keeping what fits under the cap and counting all of it."""
        assert stream is not None
        while chunk := await stream.read(_READ):
            if not self.over:
                self._stderr += chunk[: max(self.cap - len(self._stderr), 0)]
                self.spend(len(chunk))

    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")


async def _reap(proc: asyncio.subprocess.Process, err_task: asyncio.Task[None]) -> None:
    """Wait for the killed process: asyncio reports the exit only once both pipes reach EOF, so
    read what is left in them (bounded: the writers are dead). A descendant that escaped the
    kill (possible only without a PID namespace) could hold a pipe open: give up after 5 s."""

    async def drain() -> None:
        assert proc.stdout is not None
        while await proc.stdout.read(_READ):
            pass
        await err_task
        await proc.wait()

    try:
        await asyncio.wait_for(drain(), 5.0)
    except TimeoutError:
        err_task.cancel()


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group (in a PID namespace, killing its init kills every descendant)."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
