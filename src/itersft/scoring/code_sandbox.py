"""Run untrusted Python (a model's program) in a sandbox, judged by tests it cannot reach.

`run_python(files, limits, tests=UnitTests(...))` runs the files in order in one namespace in a child
process tree (`sandbox_child` sets it up), and the tests in a second process of that tree, the
checker, which calls the program's functions across a pipe and compares plain-data copies of their
results (`sandbox_harness`). "passed" is the checker's verdict, written to a pipe only the checker
holds: every test ran without an exception. The program and the tests reach the sandbox as
anonymous in-memory files; the temporary directory it uses is removed afterwards. Linux only (it
relies on Linux namespaces, prctl and /proc); elsewhere it raises.

What is contained, always:
* **The verdict**: the checker is a separate process under another uid (root), or the same uid
  made non-dumpable (no ptrace, no /proc/<pid>/mem or fd) with no capabilities on either side (a
  user). The program cannot read the tests or their expected values, patch the checker's builtins,
  modules or `exec`, forge its verdict, or fool its `==` with an object of its own; what it can do
  to the checker is make it fail (kill it, where the uids are the same; hang; send garbage). Exit
  tricks (`sys.exit(0)`, `os._exit(0)`, exit hooks) only end the program, which then fails.
* **Time**: a wall-clock limit (`wall_seconds`): past it the sandbox's whole process group is
  SIGKILLed; and RLIMIT_CPU (`cpu_seconds`) per process.
* **Memory**: RLIMIT_AS (`memory_mb`) per process: an allocation past it fails (MemoryError). The
  limit is per process, so up to `max_processes` processes may each use that much.
* **Files**: RLIMIT_FSIZE (`disk_mb`): no file written (stdout included) grows past it; core dumps off.
* **Privilege**: PR_SET_NO_NEW_PRIVS (setuid programs such as sudo grant nothing).
* **Environment**: the program starts with a fixed environment (PATH, locale, one thread for BLAS
  libraries), none of the caller's variables.

What is contained where the OS allows (each recorded in `SandboxResult.isolation`, summarised by
`describe_isolation`). Measured on the development VM (Linux 6.18, no seccomp): everything below as
root; as `nobody` everything but the private /proc, which a user namespace may not mount there
(/proc is then empty). The no-namespace fallbacks were exercised by switching namespaces off.
Expected elsewhere, not measured: Docker's default seccomp profile refuses the namespaces (root
then gets the private uids and rlimits only); Ubuntu 24.04's AppArmor lets an unprivileged user create
a user namespace but not the network, mount or PID namespaces inside it.
* **Identity**: as root, the program and the checker run as two private, random uids (2,100,000,000
  and up) with no groups: the program cannot signal or ptrace your processes or the checker. As
  another user, both run as root of a new user namespace mapped to your uid, locked out of every
  capability. Without a user namespace they simply run as you. As root without a mount namespace,
  the private uids must be able to read the interpreter's installation and enter the temporary
  directory; where they cannot (a Python under `/root`), `run_python` raises SandboxError saying so
  rather than run anything as root.
* **Processes** (fork bombs): RLIMIT_NPROC = `max_processes`, counted for the private uid or inside
  the user namespace. Root ignores RLIMIT_NPROC, hence the private uid. As a non-root user without a
  user namespace the cap is relative to your current process count, read from /proc just before.
* **Network**: a new network namespace whose only interface (loopback) is down: every connection,
  to the internet or to localhost, fails. Without one (no privilege, or seccomp), the network is open.
* **Files you have**: a new mount namespace whose root is private (`sandbox_child`): the system
  libraries and the Python installation, read-only, four devices, and a fresh tmpfs of `disk_mb` as
  the work directory (/tmp, also HOME); your home, your project, /etc and the real /tmp do not exist
  there, world-readable or not. The interpreter runs with `-I -S`: the standard library only, no
  site-packages. Without a mount namespace the program sees the whole filesystem, reads what its uid
  may, and writes wherever its uid may (world-writable `/tmp` and `/dev/shm` included).
* **Cleanup**: a new PID namespace, whose init kills every process left when the checker ends, and a
  private /proc showing only the sandbox's processes of the reader's own uid. Without it, leftovers
  are killed by process group and, for the private uids, by a `kill(-1)` run as each uid.

What is NOT contained: CPU and memory *bandwidth* (a program can slow the machine for
`wall_seconds`); kernel exploits; side channels; what the tests hand the program (a test that
passes an expected value to one of the program's functions has shown it). The checker's guarantee
also assumes the program cannot write the Python installation the checker imports from: true as
root (private uids) and in a mount namespace (read-only); not as a user without a mount namespace
whose own Python (a pyenv under your home) the program could rewrite. No cgroups are used.
For code from adversarial sources, use a VM or gVisor-class sandbox as well.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

_CHILD = Path(__file__).with_name("sandbox_child.py")
_HARNESS = Path(__file__).with_name("sandbox_harness.py")
_SYSTEM_LIBRARIES = ("/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32",
                     "/etc/ld.so.cache")
_PRIVATE_UIDS = (2_100_000_000, 40_000_000)  # first uid, count: above common LDAP/SSSD ranges, below 2**31
_OUTPUT_TAIL = 4096
_PREFIX = "itersft-sandbox-"  # then the pid of the process that made the directory
_USE_NAMESPACES = True  # tests switch this off to exercise the fallbacks of machines without namespaces


class SandboxError(RuntimeError):
    """The sandbox itself could not run the program (not a failure of the program)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed program.

    Attributes:
        wall_seconds: wall-clock time before the whole sandbox is killed.
        cpu_seconds: CPU time per process (RLIMIT_CPU).
        memory_mb: address space per process (RLIMIT_AS), in MiB.
        max_processes: processes and threads (RLIMIT_NPROC, see the module docstring).
        disk_mb: size of the work directory (tmpfs) and of any file written (RLIMIT_FSIZE), in MiB.
    """

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 1024
    max_processes: int = 32
    disk_mb: int = 64

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.wall_seconds, bool) or not isinstance(self.wall_seconds, int | float) \
                or not 0 < self.wall_seconds < float("inf"):
            problems.append(f"`wall_seconds` must be a positive number, got {self.wall_seconds!r}.")
        for name, least in (("cpu_seconds", 1), ("memory_mb", 64), ("max_processes", 1), ("disk_mb", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                problems.append(f"`{name}` must be an int >= {least}, got {value!r}.")
        if problems:
            raise ValueError("Invalid SandboxLimits:\n- " + "\n- ".join(problems))


@dataclass
class SandboxResult:
    """How a sandboxed program ended: `status`, its exit code, the tail of its output, the isolation used."""

    status: Literal["passed", "failed", "timed_out"]
    exit_code: int | None
    output: str
    isolation: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class UnitTests:
    """What the checker runs against a program (see `sandbox_harness`): `setup` (run first, in the
    checker and, as the program's first file, in the program), then `source`, which calls the
    program's functions by name; `entry_point` is a name the tests always take from the program."""

    source: str
    setup: str = ""
    entry_point: str | None = None


def run_python(files: Sequence[tuple[str, str]], limits: SandboxLimits | None = None,
               python: str | None = None, tests: UnitTests | None = None) -> SandboxResult:
    """Run the `(file name, source)` pairs in order, in one module namespace, inside the sandbox.

    With `tests`, "passed" is the checker's verdict: every test ran without an exception, against
    plain-data copies of what the program returned. Without, "passed" means the program reported
    that it ran to its end: a result for trusted programs and probes, not a verdict on hostile code.
    `python`: the interpreter that runs the program (default: this one's base installation, without
    site-packages). As root, the program runs as a private uid, which must be able to execute it.
    Raises SandboxError when the sandbox could not start the program at all (then no verdict on the
    program is possible); a program that fails, crashes or runs out of limits is a result.
    """
    if not sys.platform.startswith("linux"):
        raise SandboxError(f"the code sandbox needs Linux (namespaces, prctl, /proc); this is {sys.platform}")
    limits = limits or SandboxLimits()
    uids = None
    if os.geteuid() == 0:  # two distinct private uids: the program's and the checker's
        first = _PRIVATE_UIDS[0] + secrets.randbelow(_PRIVATE_UIDS[1] - 1)
        uids = {"program": first, "checker": first + 1}
    _remove_orphaned_directories()
    directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
    try:
        return _run_in(directory, files, tests, limits, uids, os.path.realpath(python or sys.executable))
    finally:
        _remove_tree(directory)


def _memory_file(name: str, data: Any) -> int:
    """A descriptor of an anonymous in-memory file holding `data` as JSON (no path anyone could open)."""
    descriptor = os.memfd_create(name)
    os.write(descriptor, json.dumps(data).encode())  # a memfd takes the whole write at once
    os.lseek(descriptor, 0, os.SEEK_SET)
    return descriptor


def _run_in(directory: Path, files: Sequence[tuple[str, str]], tests: UnitTests | None, limits: SandboxLimits,
            uids: dict[str, int] | None, python: str) -> SandboxResult:
    directory.chmod(0o711)  # a private uid may enter it (the work dir, without a mount namespace), not list it
    workdir, root = directory / "work", directory / "root"
    workdir.mkdir()
    root.mkdir()
    if uids is not None:
        os.chown(workdir, uids["program"], uids["program"])
    program = ([("setup", tests.setup)] if tests is not None and tests.setup else []) + list(files)
    descriptors = {"program_fd": _memory_file("program", program),
                   "check_fd": None if tests is None else _memory_file(
                       "tests", {"setup": tests.setup, "tests": tests.source, "entry_point": tests.entry_point})}
    report_read, descriptors["report_fd"] = os.pipe()
    verdict_read, descriptors["verdict_fd"] = os.pipe()
    config = {
        **descriptors, "workdir": str(workdir), "root": str(root), "expose": _exposed_paths(python), "uids": uids,
        "harness": _harness_source(), "cpu_seconds": limits.cpu_seconds,
        "memory_bytes": limits.memory_mb << 20, "disk_bytes": limits.disk_mb << 20,
        "max_processes": limits.max_processes, "namespaces": _USE_NAMESPACES,
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    }
    (directory / "config.json").write_text(json.dumps(config))
    output_path = directory / "output"
    passed_on = [fd for fd in descriptors.values() if fd is not None]
    try:
        with open(output_path, "ab") as output:  # append mode: a program that seeks cannot overwrite earlier output
            process = subprocess.Popen([python, "-I", "-S", str(_CHILD), str(directory / "config.json")],
                                       stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                       cwd=directory, env=config["env"], start_new_session=True, pass_fds=passed_on)
    finally:
        for descriptor in passed_on:
            os.close(descriptor)
    timed_out = False
    try:
        process.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(process.pid)
        process.wait()
    isolation = _read_json_pipe(report_read)
    verdict = _read_pipe(verdict_read)
    if uids is not None and isolation.get("pid_namespace") is not True:
        for uid in uids.values():  # no PID namespace took the leftovers down: everything of the private uids goes
            _kill_uid(uid)
    with open(output_path, "rb") as file:
        file.seek(max(0, output_path.stat().st_size - _OUTPUT_TAIL))
        text = file.read().decode("utf-8", "replace")
    if timed_out:
        return SandboxResult("timed_out", None, text, isolation)
    if not isolation or (process.returncode == 125 and "sandbox: could not start the program" in text):
        hint = "" if uids is None else (
            f" Running as root, the program runs as a private uid, which must be able to execute {python}, "
            f"read its installation and enter the temporary directory {directory}; without a mount namespace the "
            "sandbox cannot expose what lies under a directory other users cannot enter (such as /root).")
        raise SandboxError(f"the sandbox could not run the program (exit code {process.returncode}): "
                           f"{text[-1000:].strip()}.{hint}")
    return SandboxResult("passed" if verdict == b"pass" else "failed", process.returncode, text, isolation)


@functools.cache
def _harness_source() -> str:
    return _HARNESS.read_text(encoding="utf-8")


def _exposed_paths(python: str) -> list[str]:
    """What the private root shows of the machine: the system libraries and the Python installation
    that `python` (a real path) belongs to, each once (nothing inside a directory already shown)."""
    installations = {os.path.dirname(os.path.dirname(python))}
    if python == os.path.realpath(sys.executable):
        installations |= {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    paths = sorted({p for p in _SYSTEM_LIBRARIES if os.path.lexists(p)} | installations)
    shown: list[str] = []
    for path in paths:  # sorted, so a directory comes before what lies inside it
        if not any(path.startswith(parent.rstrip("/") + "/") for parent in shown if os.path.isdir(parent)
                   and not os.path.islink(parent)):
            shown.append(path)
    return shown


def _read_pipe(descriptor: int) -> bytes:
    """What is in the pipe now (every writer is gone by now: never wait on a stray one)."""
    os.set_blocking(descriptor, False)
    chunks = []
    try:
        while chunk := os.read(descriptor, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.close(descriptor)
    return b"".join(chunks)


def _read_json_pipe(descriptor: int) -> dict[str, Any]:
    """The isolation report the sandbox's init wrote to the pipe; {} if it never got that far."""
    data = _read_pipe(descriptor)
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}


@functools.cache
def isolation_report() -> dict[str, Any]:
    """What the sandbox isolates on this machine, measured once by running an empty program.

    Raises SandboxError when the sandbox cannot run a program here at all.
    """
    result = run_python([("probe.py", "pass\n")], SandboxLimits(wall_seconds=30.0))
    if not result.passed:
        raise SandboxError(f"the sandbox could not run an empty program ({result.status}): {result.output[-1000:]}")
    return result.isolation


def describe_isolation(report: dict[str, Any]) -> dict[str, str | None]:
    """Each isolation feature -> None when in effect, else why not (from a `SandboxResult.isolation`)."""

    def missing(key: str) -> str | None:
        return None if report.get(key) is True else str(report.get(key, "not attempted"))

    return {
        "network namespace (no network)": missing("network_namespace"),
        "private filesystem (only the libraries, Python and a tmpfs work dir)": missing("private_filesystem"),
        "PID namespace (leftover processes die)": missing("pid_namespace"),
        "private /proc (the program's own processes only)": missing("private_proc"),
        "process cap": None if report.get("process_cap") != "relative"
        else "RLIMIT_NPROC relative to your current process count (no private uid or user namespace)",
    }


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of the private `uid`: `kill(-1)` from a child that has become that uid."""
    if uid < _PRIVATE_UIDS[0]:
        raise AssertionError(f"refusing to kill the processes of uid {uid}: not a sandbox uid")
    child = os.fork()
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if os.getuid() == uid and os.geteuid() == uid:  # never kill(-1) with any other identity
                os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def _remove_orphaned_directories() -> None:
    """Remove sandbox directories whose maker died before it could (a scoring worker killed on timeout)."""
    parent = Path(tempfile.gettempdir())
    try:
        entries = [e for e in parent.iterdir()
                   if e.name.startswith(_PREFIX) and e.is_dir() and e.stat().st_uid == os.geteuid()]
    except OSError:
        return
    for entry in entries:
        maker = entry.name[len(_PREFIX):].split("-", 1)[0]
        if maker.isdigit() and not Path(f"/proc/{maker}").exists():
            _remove_tree(entry)


def _remove_tree(path: Path) -> None:
    """Remove the sandbox directory even if the program left unreadable or unwritable entries in it."""

    def make_writable_and_retry(function, failed, _):
        parent = os.path.dirname(failed)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, stat.S_IRWXU)
        function(failed)

    try:
        shutil.rmtree(path, onerror=make_writable_and_retry)
    except OSError as exc:
        logger.warning("could not remove the sandbox directory %s: %s", path, exc)
