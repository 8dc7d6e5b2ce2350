"""The built-in verifiers: `math` equivalence, and the `code` sandbox against hostile programs.

Each hostile program is scored 0.0 *and* the harm it attempts is checked not to have happened (no
file outside the sandbox, no connection to a socket this test listens on, no process left behind).
Isolation that the OS of the machine running the tests does not grant is skipped with the reason the
sandbox recorded, never assumed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from itersft.sampling.samples import Sample
from itersft.scoring import code_sandbox
from itersft.scoring.code_sandbox import SandboxError, SandboxLimits, isolation_report, run_python
from itersft.scoring.code_verifier import CodeTests, code, extract_code
from itersft.scoring.math_verifier import equivalent, math_answer
from itersft.scoring.pool import ScoringOptions
from itersft.scoring.scorers import score_samples, validate_meta

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the code sandbox is Linux-only")

EQUAL = [
    ("The answer is $\\frac{1}{2}$", "0.5"),
    ("so \\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{\\dfrac12}", "$\\frac{1}{2}$"),
    ("she has 72 apples", "72"),
    ("#### 72", "Natalia sold 48/2 = 24 clips in May.\n#### 72"),  # a GSM8K solution as reference
    ("The answer is 1,234.", "1234"),
    ("$\\boxed{\\sqrt 2}$", "\\sqrt{2}"),
    ("\\boxed{2\\pi}", "2\\pi"),
    ("$1+x$", "x+1"),
    ("The answer is 0.1", "10\\%"),
    ("$\\{2,1\\}$", "\\{1,2\\}"),
    ("$x = 3$", "3"),
    ("1/3", "\\frac{1}{3}"),
    ("The answer is 7", 7),
]
NOT_EQUAL = [
    ("\\boxed{4}", "3"),
    ("3 apples and 4 pears", "3"),  # the final answer counts, not the first number
    ("$\\frac{1}{3}$", "0.33"),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}"),
    ("$x+2$", "x+1"),
    ("\\boxed{-3}", "3"),
    ("\\boxed{[1,2]}", "(1,2)"),  # closed and open intervals differ
]


@pytest.mark.parametrize(("completion", "answer"), EQUAL)
def test_math_equal_answers_score_1(completion, answer):
    assert equivalent(completion, answer) == 1.0


@pytest.mark.parametrize(("completion", "answer"), NOT_EQUAL)
def test_math_different_answers_score_0(completion, answer):
    assert equivalent(completion, answer) == 0.0


def test_math_without_an_answer_is_unscorable_and_bad_references_are_named():
    assert math_answer(["p", "p"], ["no idea", ""], answer=["5", "5"]) == [None, None]
    with pytest.raises(ValueError, match=r"`answer` '\\\\' is neither an expression math-verify can parse"):
        equivalent("42", "\\")
    with pytest.raises(ValueError, match=r"`meta` does not suit scorer math \(2 problem"):
        validate_meta("math", [{"answer": "1"}, {"answer": " "}, {}], 3)


def test_math_runs_in_scoring_workers():
    """In a worker math-verify's signal timeouts are off and the pool's apply; the verdicts are the same."""
    pairs = EQUAL[:3] + NOT_EQUAL[:2]
    samples = [Sample("p", c, i, 0, meta={"answer": a}) for i, (c, a) in enumerate(pairs)]
    report = score_samples(math_answer, samples, options=ScoringOptions(timeout=30, workers=2))
    assert [s.score for s in samples] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert report.errors == 0 and report.timed_out == 0


# ---- code -----------------------------------------------------------------------------------------

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
QUICK = CodeTests(SandboxLimits(wall_seconds=3, cpu_seconds=2, memory_mb=256, max_processes=16, disk_mb=8))


def score(completion: str, tests=TESTS, scorer=QUICK) -> float:
    (value,) = scorer(["p"], [completion], tests=[tests])
    return value


def test_correct_code_passes_in_any_of_the_accepted_forms():
    assert score("def add(a, b):\n    return a + b\n") == 1.0
    assert score("Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.") == 1.0
    assert score("```py\ndef add(a, b):\n    return a + b\n") == 1.0  # generation stopped inside the fence
    assert score("def add(a, b):\n    return a + b\n", tests=["assert add(2, 3) == 5", "assert add(0, 0) == 0"]) == 1.0
    assert score("def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    add(input(), 1)\n") == 1.0


@pytest.mark.parametrize("completion", [
    "def add(a, b):\n    return a - b\n",  # a failing assert
    "def add(a, b) return a + b\n",  # a syntax error in the completion
    "raise ValueError('no')\n",
    "import sys\nsys.exit(0)\n",  # an early exit with status 0 must not pass
    "import os\nos._exit(0)\n",
    "import os\nos.kill(os.getpid(), 9)\n",
])
def test_wrong_or_evasive_code_scores_0(completion):
    assert score(completion) == 0.0


def test_extract_code_prefers_the_first_python_fence():
    text = "```bash\npip install x\n```\n```python\nprint(1)\n```\n```python\nprint(2)\n```"
    assert extract_code(text) == "print(1)\n"
    assert extract_code("print(3)") == "print(3)"


def test_code_check_meta_names_rows_whose_tests_do_not_parse():
    rows = [{"tests": TESTS}, {"tests": "assert f(1) ==\n"}, {}, {"tests": ["assert True", 3]}, {"tests": " "}]
    with pytest.raises(ValueError) as info:
        validate_meta("code", rows, len(rows), "eval_meta")
    message = str(info.value)
    assert "`eval_meta` does not suit scorer code (4 problem(s))" in message
    assert "row 1: `tests` does not parse as Python (line 1: invalid syntax)" in message
    assert "row 2: no tests: give the keys of exactly one format" in message
    assert "row 3: `tests` must be Python source" in message
    assert "row 4: `tests` is empty" in message and "row 0" not in message


def test_infinite_loop_is_killed_at_the_wall_clock_limit():
    result = run_python([("s.py", "while True:\n    pass\n")], SandboxLimits(wall_seconds=1))
    assert result.status == "timed_out"
    assert score("while True:\n    pass\n", scorer=CodeTests(SandboxLimits(wall_seconds=1))) == 0.0


def test_memory_hog_hits_the_memory_limit():
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"
    result = run_python([("s.py", hog)], SandboxLimits(memory_mb=256))
    assert result.status == "failed" and "MemoryError" in result.output
    assert score(hog + TESTS) == 0.0


def test_fork_bomb_is_capped_and_leaves_nothing_behind():
    report = isolation_report()
    if report.get("process_cap") == "relative":
        pytest.skip("no private uid or user namespace here: RLIMIT_NPROC is only relative to your processes")
    counter = ("import os, time\nborn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
               "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(600)\n        os._exit(0)\n"
               "    born += 1\nprint('born', born)\n")
    result = run_python([("s.py", counter)], SandboxLimits(max_processes=16))
    assert result.passed and int(result.output.split()[-1]) < 16  # capped well short of 200
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    assert score(bomb, scorer=CodeTests(SandboxLimits(wall_seconds=2, max_processes=16))) == 0.0
    assert _sandbox_processes() == []
    assert os.waitpid(_spawn_true(), 0)[1] == 0  # and this machine can still start processes


def _sandbox_processes() -> list[int]:
    """Processes owned by a sandbox uid (code_sandbox's private range) still alive after up to 10 s: the
    kernel delivers the SIGKILLs at once, but a process of a killed tree may take a moment to exit."""
    deadline = time.monotonic() + 10
    while (found := _live_sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _live_sandbox_processes() -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) >= 2_100_000_000 and fields["State"].split()[0] != "Z":
            found.append(int(entry))
    return found


def _spawn_true() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


def test_the_program_sees_only_the_libraries_python_and_its_work_directory():
    """A private root: no file of the machine outside the system libraries and the Python installation,
    so neither a world-readable secret in /tmp nor a world-writable directory is there to read or write."""
    if isolation_report().get("private_filesystem") is not True:
        pytest.skip(f"no private filesystem here: {isolation_report().get('private_filesystem')}")
    outside = Path(tempfile.mkdtemp(prefix="itersft-outside-", dir="/tmp"))
    try:
        outside.chmod(0o777)  # writable and readable by anyone: only its absence can stop the program
        (outside / "secret.txt").write_text("planted")
        (outside / "secret.txt").chmod(0o644)
        target = outside / "escaped.txt"
        listing = ("import json, os, sys\nprint(json.dumps([os.listdir('/'), sorted(os.listdir('/dev')), os.getcwd(), "
                   "any('site-packages' in p for p in sys.path)]))\n")
        result = run_python([("s.py", listing)])
        assert result.passed, result.output
        shown = json.loads(result.output)
        exposed = code_sandbox._exposed_paths(os.path.realpath(sys.executable))
        assert sorted(shown[0]) == sorted({Path(p).parts[1] for p in exposed} | {"dev", "proc", "tmp"})
        assert shown[1] == ["null", "random", "urandom", "zero"] and shown[2] == "/tmp" and shown[3] is False
        for program in (f"open({str(target)!r}, 'w').write('x')\n",
                        f"print(open({str(outside / 'secret.txt')!r}).read())\n",
                        "open('/usr/lib/itersft-escaped', 'w').write('x')\n"):
            result = run_python([("s.py", program)])
            assert result.status == "failed" and "planted" not in result.output
            assert ("No such file or directory" in result.output or "Read-only file system" in result.output)
        assert not target.exists() and not Path("/usr/lib/itersft-escaped").exists()
        assert run_python([("s.py", "open('inside.txt', 'w').write('fine')\n")]).passed  # its own dir is writable
    finally:
        for path in outside.iterdir():
            path.unlink()
        outside.rmdir()


def test_network_is_unreachable_even_on_localhost():
    if isolation_report().get("network_namespace") is not True:
        pytest.skip(f"no network namespace here: {isolation_report().get('network_namespace')}")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        program = (f"import socket\nwith socket.create_connection(('127.0.0.1', {port}), timeout=2) as s:\n"
                   "    s.sendall(b'hello')\n")
        with socket.create_connection(("127.0.0.1", port), timeout=2):  # the listener works from outside
            listener.accept()[0].close()
        result = run_python([("s.py", program)])
        assert result.status == "failed" and "Network is unreachable" in result.output
        assert score(program + TESTS) == 0.0
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing from inside the sandbox ever connected


def test_the_sandbox_directory_is_removed_afterwards(tmp_path, monkeypatch):
    """Even under a TMPDIR other users cannot enter (pytest's is mode 700), with an unwritable dir left inside."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    program = "open('left.txt', 'w').write('x')\nimport os\nos.mkdir('d')\nos.chmod('d', 0)\n"
    try:
        result = run_python([("s.py", program)])
    except SandboxError as exc:  # as root without a mount namespace, the private uid cannot enter tmp_path
        assert "enter the temporary directory" in str(exc)
    else:
        assert result.passed
    assert list(tmp_path.iterdir()) == []


def test_without_namespaces_root_still_isolates_by_uid_or_says_why_not(monkeypatch):
    """Where namespaces are refused (e.g. Docker's default seccomp), root still runs the program as a
    private uid and kills its leftovers by uid; or, when that uid cannot run the Python, says so.
    Tried with this Python and with the system's (which other users can usually run)."""
    if os.geteuid() != 0:
        pytest.skip("the private-uid fallback is for root")
    monkeypatch.setattr(code_sandbox, "_USE_NAMESPACES", False)
    daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n    os._exit(0)\n"
              "print('uid', os.getuid())\n")
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        if not os.path.exists(python):
            continue
        try:
            result = run_python([("s.py", daemon)], python=python)
        except SandboxError as exc:  # e.g. a Python under /root/.pyenv, which other users cannot enter
            assert "without a mount namespace the sandbox cannot expose what lies under a directory" in str(exc)
            continue
        assert result.passed and int(result.output.split()[-1]) >= 2_100_000_000
        assert result.isolation["network_namespace"] == "disabled"
        assert _sandbox_processes() == []  # the daemon escaped the process group, not the uid


def test_code_scorer_in_the_scoring_pool():
    """Through `score_samples`: the sandbox's own wall clock ends the hanging sample before the pool's."""
    completions = ["def add(a, b):\n    return a + b\n", "def add(a, b):\n    return 0\n", "while True:\n    pass\n"]
    samples = [Sample("p", c, i, 0, meta={"tests": TESTS}) for i, c in enumerate(completions)]
    report = score_samples(CodeTests(SandboxLimits(wall_seconds=1)), samples,
                           options=ScoringOptions(timeout=20, workers=2))
    assert [s.score for s in samples] == [1.0, 0.0, 0.0]
    assert (report.errors, report.timed_out) == (0, 0)
    assert code.limits == SandboxLimits()


def test_the_loop_refuses_unparseable_tests_before_sampling(tmp_path, answering_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itersft import IterativeSFTConfig, IterativeSFTTrainer
    from itersft.filters import Threshold
    from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
    from itersft.sampling.sampler import SamplingConfig

    trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(answering_dir), IterativeSFTConfig(
        output_dir=str(tmp_path / "trainer"), report_to="none", save_strategy="no"),
        AutoTokenizer.from_pretrained(answering_dir))
    loop = ExpertIteration(trainer, SamplingConfig(num_samples=1, max_new_tokens=2), "code", Threshold(1.0),
                           LoopConfig(output_dir=str(tmp_path / "run"), rounds=1))
    with pytest.raises(ValueError, match=r"`meta` does not suit scorer code \(1 problem\(s\)\):\n- row 1: `tests` do"):
        loop.run(["q0:", "q1:"], [{"tests": TESTS}, {"tests": "assert add(1,"}])
    with pytest.raises(ValueError, match=r"`eval_meta` does not suit scorer code.*\n- row 0: no tests"):
        loop.run(["q0:"], [{"tests": TESTS}], eval_prompts=["q9:"], eval_meta=[{}])
    assert trainer.state.global_step == 0 and list((tmp_path / "run" / "accepted").iterdir()) == []


def test_a_pool_timeout_shorter_than_the_sandbox_limit_still_takes_the_sandbox_down():
    """The pool kills the worker; the sandbox dies with it (parent-death signals, PID namespace), and the
    next sandbox run removes the directory the killed worker could not."""
    if os.geteuid() != 0:
        pytest.skip("sandbox processes are told apart by their private uid, which only root uses")
    samples = [Sample("p", "while True:\n    pass\n", 0, 0, meta={"tests": TESTS})]
    report = score_samples(CodeTests(SandboxLimits(wall_seconds=60, cpu_seconds=60)), samples,
                           options=ScoringOptions(timeout=1, workers=1))
    assert report.timed_out == 1 and samples[0].score == 0.0
    assert _sandbox_processes() == []
    orphans = [p for p in Path(tempfile.gettempdir()).glob("itersft-sandbox-*")
               if not Path("/proc", p.name.split("-")[2]).exists()]
    assert orphans  # the killed worker's directory, for now
    assert run_python([("s.py", "pass\n")]).passed
    assert not any(p.exists() for p in orphans)


_AS_A_USER = """
import json
from itersft.scoring.code_sandbox import UnitTests, isolation_report, run_python

tests = UnitTests("assert add(2, 3) == 5\\n")
probe = ("import os\\ndef add(a, b):\\n    found = []\\n"
         "    for name, act in (('chroot', lambda: os.chroot('/')), ('ptrace the checker', "
         "lambda: open(f'/proc/{os.getppid()}/mem', 'rb').read(1))):\\n"
         "        try:\\n            act()\\n            found.append(name)\\n        except OSError:\\n"
         "            pass\\n    print(json.dumps(found))\\n    return 5\\nimport json\\n")
liar = "class L:\\n    def __eq__(self, other):\\n        return True\\ndef add(a, b):\\n    return L()\\n"
killer = "import os, signal\\ndef add(a, b):\\n    os.kill(os.getppid(), signal.SIGKILL)\\n    return 5\\n"
results = {name: run_python([("s.py", program)], tests=tests)
           for name, program in (("probe", probe), ("liar", liar), ("killer", killer))}
print(json.dumps({"isolation": isolation_report(), "status": {k: r.status for k, r in results.items()},
                  "allowed": results["probe"].output}))
"""


def test_as_a_user_the_program_has_no_capabilities_and_cannot_beat_the_checker():
    """Run as `nobody` (root of a user namespace inside): no capability (chroot is refused), the
    checker's memory out of reach (where the user namespace may not mount /proc, as here, there is
    no /proc to try), and what it can do to the checker (kill it) fails the sample. Needs root to
    switch user, setpriv, and a system Python other users can run (the sandbox uses the interpreter
    it runs in)."""
    system_python = "/usr/bin/python3"
    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists(system_python):
        pytest.skip("needs root, setpriv and /usr/bin/python3 to run the sandbox as another user")
    source = Path(code_sandbox.__file__).resolve().parents[2]
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", system_python, "-I", "-c",
                           f"import sys; sys.path.insert(0, {str(source)!r})\n" + _AS_A_USER],
                          capture_output=True, text=True, timeout=120, cwd="/")
    if done.returncode != 0:
        pytest.skip(f"the sandbox does not run as nobody here: {done.stderr[-500:]}")
    report = json.loads(done.stdout.splitlines()[-1])
    if report["isolation"].get("user_namespace") is not True:
        pytest.skip(f"no user namespace here: {report['isolation'].get('user_namespace')}")
    assert report["status"] == {"probe": "passed", "liar": "failed", "killer": "failed"}
    assert json.loads(report["allowed"]) == []
