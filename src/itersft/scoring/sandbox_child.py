"""The inside of the code sandbox (Linux): isolate this process tree, then run the untrusted program.

`code_sandbox.run_python` starts this file as `python -I sandbox_child.py CONFIG.json` in a session of
its own. Standard library only: it runs by path, not as part of itersft. Three processes:

* **setup** (this script's first process): enters new namespaces, each tried on its own and recorded:
  a user namespace first when not root (mapping the caller's uid to root inside, which grants the
  rights for the rest); then network (no interfaces but a loopback that is down: every connect
  fails), mount and PID namespaces. In the mount namespace it makes every mount read-only
  (recursively) and mounts a small tmpfs as the program's work directory. When root drops to a
  private uid, directories that uid cannot enter (e.g. `/root`, holding a pyenv Python) are covered
  by an empty tmpfs with only the Python installation bound back in.
* **init** (PID 1 of the new PID namespace): mounts a `/proc` that shows only the sandbox, writes
  the isolation report (JSON) to the pipe `config["report_fd"]`, starts the runner and reaps
  orphans; when it exits the kernel kills every process left in the namespace.
* **runner**: drops root for a private uid (root only), sets `PR_SET_NO_NEW_PRIVS` and the resource
  limits, and execs `python -I -c HARNESS` on the program files in the work directory.

Every process asks to be SIGKILLed when its parent dies, so killing the setup process (as the
scoring worker does on timeout) takes the sandbox down. The harness reads a token from stdin and
writes it to stdout only after every program file ran without an exception, so a program that exits
early with status 0 (`sys.exit(0)`, `os._exit(0)`) does not pass.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 8192, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1

HARNESS = r"""
import os, sys
def _main():
    token = sys.stdin.buffer.readline()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as file:
            code = compile(file.read(), os.path.basename(path), "exec")
        exec(code, namespace)
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, b"\n" + token)
    os._exit(0)
_main()
"""

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def encode(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def _attempt(report: dict, key: str, step) -> bool:
    """Run one isolation step; record True, or the reason it failed, under `key`."""
    try:
        step()
    except OSError as exc:
        report[key] = str(exc)
        return False
    report[key] = True
    return True


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _enter_user_namespace() -> None:
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as file:
            file.write(text)


def _make_filesystem_read_only(config: dict) -> None:
    """Everything read-only, but a fresh tmpfs as work dir; hidden interpreter dirs exposed (see docstring)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for number, (hidden, keep) in enumerate(config["cover"]):
        staged = []
        for inner, path in enumerate(keep):  # hold each kept tree at a staging point before covering
            stage = os.path.join(config["stage"], f"{number}-{inner}")
            os.mkdir(stage)
            _mount(path, stage, None, MS_BIND | MS_REC)
            staged.append((stage, path))
        _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
        for stage, path in staged:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(stage, path, None, MS_MOVE)
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)),
           "mount_setattr(/, read-only, recursive)")
    owner = config["uid"] if config["uid"] is not None else 0
    _mount("tmpfs", config["workdir"], "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={config['disk_bytes']},mode=700,uid={owner},gid={owner}")


def _tasks_of(uid: int) -> int:
    """Processes and threads whose real uid is `uid` (what RLIMIT_NPROC counts)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as file:
                    fields = dict(line.split(":", 1) for line in file if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    count += int(fields["Threads"])
            except (OSError, KeyError, ValueError):
                continue
    return count


def _run(config: dict, process_cap: str) -> None:
    """The runner: drop privileges, set limits, exec the harness. Never returns."""
    try:
        _die_with_parent()
        uid = config["uid"]
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid:
                raise OSError(f"could not switch to uid {uid}")
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        processes = config["max_processes"]
        if process_cap == "relative":  # NPROC counts all of this user's tasks: allow that many more
            processes += _tasks_of(os.getuid())
        limits = {resource.RLIMIT_CPU: (config["cpu_seconds"], config["cpu_seconds"] + 1),
                  resource.RLIMIT_AS: (config["memory_bytes"],) * 2,
                  resource.RLIMIT_FSIZE: (config["disk_bytes"],) * 2,
                  resource.RLIMIT_NPROC: (processes,) * 2,
                  resource.RLIMIT_CORE: (0, 0)}
        for kind, value in limits.items():
            resource.setrlimit(kind, value)
        os.chdir(config["workdir"])
        os.execve(config["python"], [config["python"], "-I", "-c", HARNESS, *config["program"]], config["env"])
    except BaseException as exc:
        os.write(2, f"sandbox: could not start the program: {exc}\n".encode())
        os._exit(125)


def _init(config: dict, report: dict) -> None:
    """PID 1 of the sandbox (when the PID namespace exists): start the runner, reap, exit. Never returns."""
    try:
        _die_with_parent()
        if report.get("pid_namespace") is True and report.get("read_only_filesystem") is True:
            _attempt(report, "private_proc",
                     lambda: _mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC))
        if config["uid"] is not None:
            report["process_cap"] = f"RLIMIT_NPROC for private uid {config['uid']}"
        elif report.get("user_namespace") is True:
            report["process_cap"] = "RLIMIT_NPROC counted in the user namespace"
        else:
            report["process_cap"] = "relative"
        with os.fdopen(config["report_fd"], "w") as pipe:  # closed before the runner exists: it cannot forge it
            json.dump(report, pipe)
        runner = os.fork()
        if runner == 0:
            _run(config, report["process_cap"])
        while True:
            pid, status = os.wait()
            if pid == runner:
                os._exit(os.waitstatus_to_exitcode(status) % 256)
    except BaseException as exc:
        os.write(2, f"sandbox: {exc}\n".encode())
        os._exit(125)


def main(config_path: str) -> None:
    with open(config_path) as file:
        config = json.load(file)
    _die_with_parent()
    os.umask(0o022)
    report: dict = {"euid": os.geteuid()}
    steps = {"network_namespace": CLONE_NEWNET, "mount_namespace": CLONE_NEWNS, "pid_namespace": CLONE_NEWPID}
    if not config["namespaces"]:  # tests of the fallbacks turn namespaces off
        report.update(dict.fromkeys(steps, "disabled"), user_namespace="disabled")
        steps = {}
    elif os.geteuid() != 0:
        _attempt(report, "user_namespace", _enter_user_namespace)
    for key, flag in steps.items():
        _attempt(report, key, lambda flag=flag, key=key: _check(_libc.unshare(flag), key))
    if report["mount_namespace"] is True:
        _attempt(report, "read_only_filesystem", lambda: _make_filesystem_read_only(config))
    else:
        report["read_only_filesystem"] = "no mount namespace"
    init = os.fork()
    if init == 0:
        _init(config, report)
    os.close(config["report_fd"])
    _, status = os.waitpid(init, 0)
    sys.stdout.flush()
    os._exit(os.waitstatus_to_exitcode(status) % 256)


if __name__ == "__main__":
    main(sys.argv[1])
