"""The code reward and its sandbox (r1lab/rewards/code.py, sandbox.py): honest programs score
their tests; hostile ones score 0 (or their honest partial score), end within the limits, and
leave the host unchanged: no file outside the sandbox created, changed or deleted, no process
left, no connection made, no secret read."""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import pytest

from r1lab.rewards import RewardSpec, build_rewards, score
from r1lab.rewards.code import code_reward, extract_program
from r1lab.rewards.sandbox import Limits, SandboxError, bubblewrap_works, run_program

LIMITS = dict(cpu_s=1, wall_s=2.0)
needs_bwrap = pytest.mark.skipif(not bubblewrap_works(), reason="bubblewrap (bwrap) is not installed here")


def answer(program: str) -> str:
    return f"<think>write it</think> <answer>```python\n{program}\n```</answer>"


ADD = {"tests": [{"input": "3 4\n", "output": "7\n"}, {"input": "10 -2\n", "output": "8"},
                 {"input": "0 0\n", "output": "0\n"}]}


def test_extract_program_takes_the_fenced_block_or_the_whole_answer():
    assert extract_program(answer("print(1)")) == "print(1)\n"
    assert extract_program("<think>x</think><answer>print(2)</answer>") == "print(2)"
    assert extract_program("print(3)") is None                                    # no answer block
    assert extract_program("<think>x</think><answer> </answer>") is None


def test_stdin_tests_score_the_fraction_passed_and_binary_all_or_nothing():
    right = answer("a, b = map(int, input().split())\nprint(a + b)")
    half = answer("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)")   # passes 2 of 3
    assert code_reward(right, ADD, **LIMITS) == 1.0
    assert code_reward(half, ADD, **LIMITS) == pytest.approx(2 / 3)
    assert code_reward(half, ADD, binary=True, **LIMITS) == 0.0
    assert code_reward(right, {"tests": []}, **LIMITS) == 0.0                       # no tests pay nothing
    assert code_reward("<answer></answer>", ADD, **LIMITS) == 0.0


def test_assert_tests_pass_only_when_they_run_to_the_end():
    tests = {"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]}
    assert code_reward(answer("def add(a, b):\n    return a + b"), tests, **LIMITS) == pytest.approx(2 / 3)
    # ending the process early with status 0 does not skip the asserts into a pass
    for escape in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"):
        assert code_reward(answer(f"def add(a, b):\n    return 0\n{escape}"), tests, **LIMITS) == 0.0


def test_a_batch_is_scored_in_parallel_through_the_rewards_spec():
    scorers = build_rewards({"code": RewardSpec(weight=1.0, cpu_s=1, wall_s=2.0)})
    right = answer("a, b = map(int, input().split())\nprint(a + b)")
    totals, per = score(scorers, ["p"] * 3, [right, "no answer", right], [ADD] * 3)
    assert totals == [1.0, 0.0, 1.0] and per["code"] == [1.0, 0.0, 1.0]


def test_without_bubblewrap_limits_still_hold_and_strict_refuses(monkeypatch):
    from r1lab.rewards import sandbox
    monkeypatch.setattr(sandbox, "bubblewrap_works", lambda: False)
    sandbox._warn_weak.cache_clear()
    with pytest.warns(RuntimeWarning, match="resource limits only"):
        out = run_program("while True: pass", limits=Limits(cpu_s=1, wall_s=3.0))
    assert out.returncode != 0 and not out.isolated
    with pytest.raises(SandboxError, match="strict"):
        run_program("print(1)", strict=True)


# Each program prints "ok" only if its attack worked (its test expects "ok"), so a contained
# attack scores 0; the host is checked after each. {token} names host canaries and markers.
HOSTILE = {
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "fork_1000_sleepers": ("import os, time\nn = 0\ntry:\n    for _ in range(1000):\n        if os.fork() == 0:\n"
                           "            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError:\n"
                           "    pass\nprint('ok' if n == 1000 else 'no')"),
    "thread_bomb": ("import threading, time\nn = 0\ntry:\n    for _ in range(1000):\n"
                    "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
                    "except RuntimeError:\n    pass\nprint('ok' if n == 1000 else 'no')"),
    "rm_rf_home": ("import os, shutil\nfound = os.path.exists('{home_canary}')\n"
                   "shutil.rmtree(os.path.expanduser('~'), ignore_errors=True)\n"
                   "shutil.rmtree('{home_canary}', ignore_errors=True)\n"
                   "print('ok' if found and not os.path.exists('{home_canary}') else 'no')"),
    "write_host_tmp": ("import os\nfor d in ('/tmp', '/var/tmp', '/dev/shm'):\n    try:\n"
                       "        open(f'{{d}}/r1lab-pwned-{token}', 'w').write('x')\n    except OSError:\n        pass\n"
                       "open('{tmp_canary}', 'w').write('pwned')\nprint('no')"),
    "overwrite_interpreter": "import sys\nopen(sys.executable, 'ab').write(b'x')\nprint('ok')",
    "read_passwd_and_home": ("import os\nfound = [p for p in ('/etc/passwd', '/etc/shadow', '{home_canary}/secret')\n"
                             "         if os.path.exists(p)]\nprint('ok' if found else 'no')"),
    "env_secrets": ("import os\nleak = any('{token}' in v for v in os.environ.values())\n"
                    "for pid in os.listdir('/proc'):\n    try:\n"
                    "        leak |= '{token}'.encode() in open(f'/proc/{{pid}}/environ', 'rb').read()\n"
                    "    except (OSError, ValueError):\n        pass\nprint('ok' if leak else 'no')"),
    "tcp_to_host": ("import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('ok')"),
    "internet": "import socket\nsocket.create_connection(('pypi.org', 443), timeout=1)\nprint('ok')",
    "abstract_unix_socket": ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0r1lab-{token}')\nprint('ok')"),
    "infinite_loop": "while True:\n    pass",
    "sleep_ignoring_sigterm": ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                               "while True:\n    time.sleep(1)"),
    "allocate_10_gb": "x = bytearray(10 ** 10)\nprint('ok')",
    "stdout_1_gb": "import sys\nfor _ in range(16384):\n    sys.stdout.write('x' * 65536)\nprint('ok')",
    "fill_disk": "with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'x' * (1 << 20))\nprint('ok')",
    "open_many_files": "fs = [open('/dev/null') for _ in range(100000)]\nprint('ok')",
    "ctypes_segfault": "import ctypes\nctypes.string_at(0)\nprint('ok')",
    "recursion_limit_bomb": "import sys\nsys.setrecursionlimit(10 ** 9)\ndef f(n):\n    return f(n + 1)\nf(0)",
    "kill_parent_and_all": ("import os, signal\nfor target in (os.getppid(), -1):\n    try:\n"
                            "        os.kill(target, signal.SIGKILL)\n    except OSError:\n        pass\nprint('no')"),
    "orphan_daemon": ("import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)',"
                      " 'r1lab-orphan-{token}'], start_new_session=True)\nprint('ok')"),
    "double_fork_daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                           "        os.execv('/bin/sleep', ['sleep', '60'])\n    os._exit(0)\nos.wait()\n"
                           "print('ok')"),
    "see_host_processes": ("import os\nprint('ok' if len([p for p in os.listdir('/proc') if p.isdigit()]) > 5 else 'no')"),
    "answer_then_hang": "print('ok')\nwhile True:\n    pass",
    "chmod_and_hide_in_workdir": ("import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a/b', 0)\n"
                                  "os.chmod('a', 0)\nprint('no')"),
}
# the attacks that honestly pass their test: the daemons print "ok" (they are killed with the run)
PARTIAL = {"orphan_daemon": 1.0, "double_fork_daemon": 1.0}


@pytest.fixture
def host(tmp_path):
    token = secrets.token_hex(8)
    home_canary = Path.home() / f".r1lab-canary-{token}"
    home_canary.mkdir()
    (home_canary / "secret").write_text(token)
    tmp_canary = Path("/tmp") / f"r1lab-canary-{token}"
    tmp_canary.write_text("intact")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0r1lab-{token}")
    abstract.listen(4)
    abstract.setblocking(False)
    os.environ["R1LAB_TEST_SECRET"] = token
    workdirs = set(Path("/tmp").glob("r1lab-code-*"))
    try:
        yield dict(token=token, home_canary=home_canary, tmp_canary=tmp_canary,
                   port=listener.getsockname()[1], listener=listener, abstract=abstract, workdirs=workdirs)
    finally:
        del os.environ["R1LAB_TEST_SECRET"]
        listener.close()
        abstract.close()
        tmp_canary.unlink(missing_ok=True)
        for f in home_canary.iterdir():
            f.unlink()
        home_canary.rmdir()


def host_changes(h) -> list[str]:
    token = h["token"]
    found = []
    if (h["home_canary"] / "secret").read_text() != token:
        found.append("home canary changed")
    if h["tmp_canary"].read_text() != "intact":
        found.append("/tmp canary changed")
    found += [p for p in (f"/tmp/r1lab-pwned-{token}", f"/var/tmp/r1lab-pwned-{token}",
                          f"/dev/shm/r1lab-pwned-{token}") if os.path.exists(p)]
    for sock in (h["listener"], h["abstract"]):
        try:
            sock.accept()
            found.append(f"connection accepted on {sock.getsockname()!r}")
        except BlockingIOError:
            pass
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"r1lab-code-" in cmd or token.encode() in cmd or b"sleep\x0060" in cmd:
            found.append(f"process left: {cmd!r}")
    if set(Path("/tmp").glob("r1lab-code-*")) - h["workdirs"]:
        found.append("sandbox directory left behind")
    return found


@needs_bwrap
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_program_scores_what_it_earns_within_its_limits_and_leaves_the_host_unchanged(name, host):
    program = HOSTILE[name].format(**{k: v for k, v in host.items() if isinstance(v, (str, int, Path))})
    start = time.monotonic()
    got = code_reward(answer(program), {"tests": [{"input": "", "output": "ok"}]}, **LIMITS)
    elapsed = time.monotonic() - start
    assert got == PARTIAL.get(name, 0.0)
    assert elapsed < LIMITS["wall_s"] + 1.0, elapsed
    time.sleep(0.05)                                   # let the kernel reap the sandbox's processes
    assert host_changes(host) == []


@needs_bwrap
def test_a_program_that_answers_then_hangs_keeps_the_tests_it_passed_before():
    tests = {"tests": [{"input": "1\n", "output": "1"}, {"input": "2\n", "output": "2"},
                       {"input": "hang\n", "output": "x"}, {"input": "3\n", "output": "3"}]}
    program = answer("s = input()\nwhile s == 'hang':\n    pass\nprint(s)")
    start = time.monotonic()
    assert code_reward(program, tests, cpu_s=5, wall_s=1.0) == 0.5     # the test after the hang is not run
    assert time.monotonic() - start < 3.0
