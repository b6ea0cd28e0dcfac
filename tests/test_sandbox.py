"""The sandbox: honest programs pass, wrong and hostile ones fail with their reason, nothing
is left behind. An autouse fixture checks after every test that all processes the sandbox
started are gone (scanning /proc for their pids, groups and sessions) and that its
temporary directories were removed."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onthejob import sandbox
from onthejob.sandbox import CaseResult, Limits, Verdict, run_cases, run_check

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox tests read /proc")

FAST = Limits(cpu_seconds=1, wall_seconds=5)
SECCOMP = os.uname().machine in ("x86_64", "aarch64")


def py(source: str) -> str:
    """A program written as an indented triple-quoted string."""
    return textwrap.dedent(source).lstrip("\n")


def _processes_in(groups: set[int]) -> list[str]:
    """Processes whose pid, process group or session is one of `groups` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = stat.rpartition(")")[2].split()
        pid, pgrp, session = int(entry.name), int(fields[2]), int(fields[3])
        if {pid, pgrp, session} & groups:
            found.append(stat[:80])
    return found


class Spawned:
    """What the sandbox started during a test: process ids (with argv) and temp dirs."""

    def __init__(self) -> None:
        self.processes: list[tuple[int, list[str]]] = []
        self.dirs: list[str] = []

    def pid_of(self, role: str) -> int | None:
        for pid, args in self.processes:
            if f"onthejob-sandbox-{role}" in args:
                return pid
        return None


@pytest.fixture(autouse=True)
def spawned(monkeypatch: pytest.MonkeyPatch):
    record = Spawned()
    real_popen, real_mkdtemp = subprocess.Popen, tempfile.mkdtemp

    class RecordingPopen(real_popen):  # type: ignore[valid-type, misc]
        def __init__(self, args, *rest, **kwargs):
            super().__init__(args, *rest, **kwargs)
            record.processes.append((self.pid, list(args)))

    def recording_mkdtemp(*args, **kwargs):
        path = real_mkdtemp(*args, **kwargs)
        record.dirs.append(path)
        return path

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    yield record
    assert _processes_in({pid for pid, _ in record.processes}) == []
    assert [path for path in record.dirs if os.path.exists(path)] == []


def test_the_leftover_check_sees_a_leftover():
    survivor = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert _processes_in({survivor.pid}) != []
    finally:
        survivor.kill()
        survivor.wait()
    assert _processes_in({survivor.pid}) == []


# ------------------------------------------------------------------ honest programs

DOUBLE = py("""
    def f(x):
        return x * 2
""")


def test_correct_program_passes(spawned: Spawned):
    verdict = run_cases(DOUBLE, "f", [((3,), 6), ((0.5,), 1.0)], FAST)
    assert verdict == Verdict(
        passed=True,
        reason="passed",
        cases=(
            CaseResult(args="(3,)", expected="6", got="6", error=None, passed=True),
            CaseResult(args="(0.5,)", expected="1.0", got="1.0", error=None, passed=True),
        ),
    )
    assert spawned.pid_of("worker") and spawned.pid_of("judge") and len(spawned.dirs) == 1


def test_wrong_answer_names_the_failing_case_and_all_cases_are_tried():
    verdict = run_cases(DOUBLE, "f", [((1,), 2), ((2,), 5), ((3,), 6)], FAST)
    assert not verdict.passed
    assert verdict.reason == "wrong answer on f(2)"
    assert [case.passed for case in verdict.cases] == [True, False, True]
    assert (verdict.cases[1].got, verdict.cases[1].expected) == ("4", "5")


def test_runtime_error_fails_that_case_and_the_next_cases_still_run():
    program = py("""
        def f(x):
            return 10 // x
    """)
    verdict = run_cases(program, "f", [((0,), 0), ((5,), 2)], FAST)
    expected = "runtime error: ZeroDivisionError: integer division or modulo by zero (on f(0))"
    assert verdict.reason == expected
    assert verdict.cases[0].got is None
    assert verdict.cases[0].error.startswith("ZeroDivisionError")
    assert verdict.cases[1].passed


def test_syntax_error_fails_with_reason():
    verdict = run_cases("def f(x)\n    return x\n", "f", [((1,), 1)], FAST)
    assert not verdict.passed
    assert verdict.reason.startswith("syntax error: ") and "(line 1)" in verdict.reason
    assert verdict.cases[0].error == "not run: " + verdict.reason


def test_missing_entry_point_fails():
    verdict = run_cases(DOUBLE, "g", [((1,), 2)], FAST)
    assert verdict.reason == "entry point 'g' is not defined"
    assert not verdict.cases[0].passed


def test_values_cross_exactly():
    values = [
        (1, 2.5),
        [1, (2, 3)],
        {(1, 2): {"a": None}, 3: [True, False]},
        {1, 2, 3},
        frozenset({"x"}),
        10**100,
        -(2**70),
        -0.0,
        math.inf,
        b"\x00\xff",
        1 + 2j,
        "é\n\x00",
    ]
    identity = py("""
        def f(x):
            return x
    """)
    verdict = run_cases(identity, "f", [((value,), value) for value in values], FAST)
    assert verdict.passed, verdict.reason
    assert [case.got for case in verdict.cases] == [repr(value) for value in values]


def test_equality_is_python_equality_in_the_judge():
    program = py("""
        def f(kind):
            return {"list": [1, 2], "nan": float("nan"), "int": 1}[kind]
    """)
    cases = [(("list",), (1, 2)), (("nan",), math.nan), (("int",), 1.0)]
    verdict = run_cases(program, "f", cases, FAST)
    assert [case.passed for case in verdict.cases] == [False, False, True]
    assert verdict.cases[1].got == "nan"


def test_standard_library_and_sandbox_files_work():
    program = py("""
        from typing import List
        import collections, hashlib, math, re, json, random, tempfile

        def f(text: str) -> List[str]:
            with open("notes.txt", "w") as out:
                out.write(text)
            with tempfile.TemporaryFile() as scratch:
                scratch.write(b"x")
            data = open("notes.txt").read().encode("latin-1")
            return [hashlib.md5(data).hexdigest()[:4], str(math.isqrt(16))]
    """)
    expected = [hashlib.md5(b"abc").hexdigest()[:4], "4"]
    verdict = run_cases(program, "f", [(("abc",), expected)], FAST)
    assert verdict.passed, (verdict.reason, verdict.stderr)


def test_threads_in_the_program_work():
    program = py("""
        import threading

        def f(x):
            out = []
            thread = threading.Thread(target=lambda: out.append(x + 1))
            thread.start()
            thread.join()
            return out[0]
    """)
    assert run_cases(program, "f", [((1,), 2)], FAST).passed


def test_output_is_captured():
    program = py("""
        import sys

        def f(x):
            print("hi", x)
            sys.stderr.write("oops")
            return x
    """)
    verdict = run_cases(program, "f", [((1,), 1)], FAST)
    assert verdict.passed
    assert (verdict.stdout, verdict.stderr) == ("hi 1\n", "oops")


def test_callable_from_threads_concurrently():
    def one(n: int) -> Verdict:
        return run_cases(DOUBLE, "f", [((n,), 2 * n)], FAST)

    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(one, range(8)))
    assert [verdict.passed for verdict in verdicts] == [True] * 8


ADD_TEST = py("""
    def check(candidate):
        assert candidate(2, 3) == 5
        assert candidate(-1, 1) == 0
""")


def test_run_check_passes_and_fails_like_humaneval():
    assert run_check("def add(a, b):\n    return a + b\n", ADD_TEST, "add", FAST).passed
    almost = "def add(a, b):\n    return a + b if a > 0 else 7\n"
    assert run_check(almost, ADD_TEST, "add", FAST).reason == "wrong answer on add(-1, 1)"


def test_run_check_exposes_program_helpers_but_test_definitions_win():
    program = py("""
        def double(x):
            return 2 * x

        def half(x):
            return x // 2
    """)
    uses_helper = py("""
        def check(candidate):
            assert candidate(double(21)) == 21
    """)
    assert run_check(program, uses_helper, "half", FAST).passed
    cheat = py("""
        def double(x):
            return x

        def half(x):
            return x
    """)
    # a helper taken from the program is the program's word ...
    assert run_check(cheat, uses_helper, "half", FAST).passed
    # ... so a test that defines the helper itself is not fooled
    trusted = "def double(x):\n    return 2 * x\n\n" + uses_helper
    assert run_check(cheat, trusted, "half", FAST).reason == "wrong answer on half(42)"


def test_problems_in_trusted_code_raise():
    with pytest.raises(ValueError, match="SyntaxError"):
        run_check(DOUBLE, "def check(candidate)\n", "f", FAST)
    with pytest.raises(ValueError, match="check"):
        run_check(DOUBLE, "x = 1\n", "f", FAST)
    with pytest.raises(TypeError, match="case 0"):
        run_cases(DOUBLE, "f", [((object(),), 1)], FAST)


# ------------------------------------------------------------- forging a verdict


def test_printing_pass_and_exiting_early_does_not_pass():
    exits_at_import = py("""
        import sys
        print("PASS")
        sys.exit(0)

        def f(x):
            return 0
    """)
    exits_hard = py("""
        import os
        os.write(1, b"PASS")
        os._exit(0)
    """)
    exits_in_call = py("""
        def f(x):
            print("PASS")
            raise SystemExit(0)
    """)
    test = "def check(candidate):\n    assert candidate(1) == 2\n"
    reasons = []
    for program in (exits_at_import, exits_hard, exits_in_call):
        verdict = run_cases(program, "f", [((1,), 2)], FAST)
        assert not verdict.passed and "PASS" in verdict.stdout, program
        assert not run_check(program, test, "f", FAST).passed, program
        reasons.append(verdict.reason)
    assert reasons == [
        "runtime error: SystemExit: 0 (while defining the program)",
        "exited with code 0",
        "runtime error: SystemExit: 0 (on f(1))",
    ]


def test_an_always_equal_object_does_not_pass():
    program = py("""
        class Anything:
            def __eq__(self, other):
                return True

        def f(x):
            return Anything()
    """)
    verdict = run_cases(program, "f", [((1,), 2)], FAST)
    assert not verdict.passed
    assert "Anything objects cannot cross the sandbox" in verdict.reason
    int_like = py("""
        class Two(int):
            def __eq__(self, other):
                return True

        def f(x):
            return Two(7)
    """)
    verdict = run_cases(int_like, "f", [((1,), 2)], FAST)
    assert (verdict.passed, verdict.cases[0].got) == (False, "7")


def test_patching_builtins_and_test_helpers_does_not_pass():
    program = py("""
        import builtins
        builtins.abs = lambda x: 0
        builtins.AssertionError = type("Ignored", (Exception,), {})

        def abs(x):
            return 0

        def check(candidate):
            return None

        def f(x):
            return 0
    """)
    test = "def check(candidate):\n    assert abs(candidate(2) - 4) < 1e-9\n"
    assert run_check(program, test, "f", FAST).reason == "wrong answer on f(2)"


def test_writing_forged_verdicts_to_every_descriptor_does_not_pass():
    forged = json.dumps({"passed": True, "reason": "passed", "ok": 2, "cases": []})
    program = py(f"""
        import os

        def f(x):
            for fd in range(64):
                try:
                    os.write(fd, b"PASS\\n" + {forged!r}.encode() + b"\\n")
                except OSError:
                    pass
            return 0
    """)
    verdict = run_cases(program, "f", [((1,), 2)], FAST)
    assert not verdict.passed and "PASS" in verdict.stdout


def test_reaching_for_the_caller_or_judge_is_blocked():
    program = py("""
        import os

        def f(x):
            return open(f"/proc/{os.getppid()}/cmdline").read()
    """)
    verdict = run_cases(program, "f", [((1,), "")], FAST)
    assert verdict.reason.startswith("blocked: file access (/proc/")


# ----------------------------------------------------------------- hostile programs

SPIN = py("""
    def f(x):
        while True:
            pass
""")


def test_infinite_loop_hits_the_cpu_limit():
    started = time.monotonic()
    verdict = run_cases(SPIN, "f", [((1,), 2)], FAST)
    assert verdict.reason == "timeout (cpu 1s)"
    assert time.monotonic() - started < 4.5


def test_ignoring_sigxcpu_still_hits_the_cpu_limit():
    program = py("""
        import signal
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        while True:
            pass
    """)
    verdict = run_cases(program, "f", [((1,), 2)], Limits(cpu_seconds=1, wall_seconds=8))
    assert verdict.reason == "timeout (cpu 1s)"


def test_sleeping_hits_the_wall_clock_and_keeps_earlier_cases():
    program = py("""
        import time

        def f(x):
            if x:
                time.sleep(60)
            return x
    """)
    started = time.monotonic()
    verdict = run_cases(program, "f", [((0,), 0), ((1,), 1), ((0,), 0)], Limits(wall_seconds=1))
    assert verdict.reason == "timeout (wall 1s)"
    assert time.monotonic() - started < 3.5
    assert [case.passed for case in verdict.cases] == [True, False, False]
    assert [case.error for case in verdict.cases] == [
        None,
        "timeout (wall 1s)",
        "not run: timeout (wall 1s)",
    ]


def test_fork_bomb_is_blocked():
    program = py("""
        import os

        def f(x):
            while True:
                os.fork()
    """)
    assert (
        run_cases(program, "f", [((1,), 2)], FAST).reason == "blocked: process creation (os.fork)"
    )


def test_subprocess_is_blocked_even_without_its_audit_event():
    plain = py("""
        import subprocess

        def f(x):
            return subprocess.run(["cat", "/etc/passwd"], capture_output=True).stdout
    """)
    verdict = run_cases(plain, "f", [((1,), 2)], FAST)
    assert verdict.reason == "blocked: process creation (subprocess.Popen)"
    # subprocess raises its audit event from Python code, which the program can silence
    silenced = "import sys\nsys.audit = lambda *args: None\n" + plain
    verdict = run_cases(silenced, "f", [((1,), 2)], FAST)
    assert not verdict.passed and "root:" not in verdict.stdout + verdict.cases[0].error
    if SECCOMP:
        assert verdict.reason == "blocked: forbidden system call"


def test_memory_bomb_hits_the_memory_limit():
    hoarder = py("""
        def f(x):
            hoard = []
            while True:
                hoard.append(bytearray(10**7))
    """)
    for program in (hoarder, "blob = bytearray(10**11)\n"):
        verdict = run_cases(program, "f", [((1,), 2)], Limits(memory_mb=256, wall_seconds=5))
        assert verdict.reason == "memory limit", program


def test_huge_output_hits_the_output_limit_and_is_truncated():
    program = py("""
        def f(x):
            while True:
                print("x" * 1000)
    """)
    verdict = run_cases(program, "f", [((1,), 2)], Limits(output_kb=16))
    assert verdict.reason == "output limit"
    assert 0 < len(verdict.stdout) <= 16 * 1024


def test_reading_files_outside_is_blocked_even_when_the_error_is_caught():
    catching = py("""
        def f(x):
            try:
                open("/etc/passwd").read()
            except Exception:
                pass
            return 2
    """)
    verdict = run_cases(catching, "f", [((1,), 2)], FAST)
    assert verdict.reason == "blocked: file access (/etc/passwd)"
    relative = "def f(x):\n    return open('../../../../etc/passwd').read()\n"
    verdict = run_cases(relative, "f", [((1,), 2)], FAST)
    assert verdict.reason == "blocked: file access (unsafe path)"
    via_pwd = "import pwd\ndef f(x):\n    return str(pwd.getpwall())\n"
    verdict = run_cases(via_pwd, "f", [((1,), 2)], FAST)
    assert verdict.reason.startswith("runtime error: ImportError: module pwd is not available")


def test_writing_outside_is_blocked(tmp_path: Path):
    target = tmp_path / "escaped.txt"
    program = py(f"""
        def f(x):
            open({str(target)!r}, "w").write("x")
            return 2
    """)
    verdict = run_cases(program, "f", [((1,), 2)], FAST)
    assert verdict.reason == f"blocked: file access ({target})"
    assert not target.exists()


def test_large_files_hit_the_file_size_limit():
    program = py("""
        def f(x):
            open("big", "wb").write(bytes(2 * 2**20))
            return 2
    """)
    verdict = run_cases(program, "f", [((1,), 2)], Limits(file_size_mb=1))
    assert verdict.reason.startswith("runtime error: OSError: [Errno 27] File too large")


def test_network_is_blocked():
    program = py("""
        import socket

        def f(x):
            socket.socket().connect(("127.0.0.1", 9))
            return 2
    """)
    verdict = run_cases(program, "f", [((1,), 2)], FAST)
    assert verdict.reason == "blocked: network (socket.__new__)"


def test_native_code_is_blocked():
    via_ctypes = "import ctypes\n"
    verdict = run_cases(via_ctypes, "f", [((1,), 2)], FAST)
    assert verdict.reason.startswith("runtime error: ImportError: module ctypes is not available")
    own_extension = py("""
        import sys
        open("evil.so", "wb").write(b"\\x7fELF" + bytes(64))
        sys.path.insert(0, ".")
        import evil
    """)
    verdict = run_cases(own_extension, "f", [((1,), 2)], FAST)
    assert verdict.reason.startswith("blocked: native code (extension module ")


def test_run_check_stops_hostile_programs_too():
    test = "def check(candidate):\n    assert candidate(1) == 2\n"
    fork = "import os\ndef f(x):\n    os.fork()\n    return 2\n"
    assert run_check(fork, test, "f", FAST).reason == "blocked: process creation (os.fork)"
    assert run_check(SPIN, test, "f", FAST).reason == "timeout (cpu 1s)"
    hoard = "def f(x):\n    return bytearray(10**11)\n"
    assert run_check(hoard, test, "f", FAST).reason == "memory limit"


# ------------------------------------------------------------------ interruptions

SLEEPER = py("""
    import time

    def f(x):
        open("started", "w").close()
        time.sleep(60)
""")


def _wait_until_started(spawned: Spawned, timeout: float = 10.0) -> None:
    """Wait until SLEEPER is inside f (it wrote a file in its sandbox directory)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(os.path.exists(os.path.join(path, "started")) for path in spawned.dirs):
            return
        time.sleep(0.02)
    raise AssertionError("the program never started")


def test_worker_killed_mid_run(spawned: Spawned):
    result: list[Verdict] = []
    runner = threading.Thread(
        target=lambda: result.append(
            run_cases(SLEEPER, "f", [((1,), 2), ((2,), 3)], Limits(wall_seconds=30))
        )
    )
    runner.start()
    _wait_until_started(spawned)
    worker = spawned.pid_of("worker")
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    runner.join(timeout=10)
    assert not runner.is_alive()
    verdict = result[0]
    assert verdict.reason == "killed by SIGKILL"
    assert [case.passed for case in verdict.cases] == [False, False]


def test_ctrl_c_cleans_up(spawned: Spawned):
    # A suite started in the background by a shell without job control inherits SIGINT
    # ignored; Ctrl-C at a terminal raises KeyboardInterrupt, which is what this tests.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_a_sandboxed_run(spawned)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_a_sandboxed_run(spawned: Spawned) -> None:
    main = threading.get_ident()

    def interrupt() -> None:
        _wait_until_started(spawned)
        signal.pthread_kill(main, signal.SIGINT)

    helper = threading.Thread(target=interrupt)
    helper.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_cases(SLEEPER, "f", [((1,), 2)], Limits(wall_seconds=30))
    helper.join()
    assert time.monotonic() - started < 10
    assert spawned.pid_of("worker") is not None  # the autouse fixture checks that it is gone


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop happens only as root")
def test_as_root_the_program_runs_as_a_fresh_unprivileged_user():
    program = py("""
        import os

        def f(x):
            return [os.getuid(), os.getgid(), os.getgroups()]
    """)
    verdict = run_cases(program, "f", [((1,), 0)], FAST)
    uid, gid, groups = ast.literal_eval(verdict.cases[0].got)
    assert uid >= sandbox._SANDBOX_UID_BASE and gid == uid and groups == []


# --------------------------------------------------------------------- wire format


plain_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers() | st.text(), max_size=4)
        | st.dictionaries(st.integers() | st.text() | st.tuples(st.integers()), inner, max_size=4)
    ),
    max_leaves=20,
)


def _canonical(value) -> str:
    """The encoded form with set and dict members sorted: equal iff same values and types."""

    def sort(data):
        if isinstance(data, list):
            return [sort(item) for item in data]
        if isinstance(data, dict):
            ((tag, body),) = data.items()
            if tag in ("set", "frozenset", "dict"):
                return {tag: sorted((sort(item) for item in body), key=json.dumps)}
            return {tag: sort(body)}
        return data

    return json.dumps(sort(sandbox._encode(value)))


@given(plain_data)
def test_encoding_round_trips_through_both_json_codecs(value):
    dumps, loads = sandbox._json_codec()
    for text in (json.dumps(sandbox._encode(value)), dumps(sandbox._encode(value))):
        back = sandbox._decode(loads(text))
        assert _canonical(back) == _canonical(value)
        assert back == value


def test_encoding_refuses_what_is_not_plain_data():
    for value in (object(), lambda: 0, {1: object()}, [print]):
        with pytest.raises(TypeError, match="plain data"):
            sandbox._encode(value)
    with pytest.raises(ValueError, match="unknown tag"):
        sandbox._decode({"pickle": "..."})
