"""The inside of the code sandbox (Linux): isolate this process tree, then hand over to the harness.

`code_sandbox.run_python` starts this file as `python -I -S sandbox_child.py CONFIG.json` in a session
of its own, with the interpreter that is to run the program. Standard library only: it runs by path,
not as part of itersft. Three processes:

* **setup** (this script's first process): enters new namespaces, each tried on its own and recorded:
  a user namespace first when not root (mapping the caller's uid to root inside, which grants the
  rights for the rest); then network (no interfaces but a loopback that is down: every connect
  fails), mount and PID namespaces. In the mount namespace it builds a private root and moves into
  it (`pivot_root`; the old root is detached): a read-only tmpfs holding only the system libraries,
  the Python installation (both bound read-only), four devices (null, zero, random, urandom), an
  empty /proc and, as /tmp, a fresh tmpfs of `disk_mb` that is the work directory. Nothing else of
  the machine (home directories, /etc, your project, /tmp) exists there.
* **init** (PID 1 of the new PID namespace): mounts a `/proc` that shows only the sandbox, and of it
  only the processes of the reader's own uid (`hidepid=2`); where that is refused (a user namespace
  may not mount /proc once the old root is gone), /proc stays an empty directory; writes the isolation report (JSON) to
  the pipe `config["report_fd"]`, starts the runner and reaps orphans; when it exits the kernel kills
  every process left in the namespace.
* **runner**: sets `PR_SET_NO_NEW_PRIVS` and the resource limits; when it is root of a user
  namespace (not root outside), gives up every capability for good (securebits, bounding set, then
  the sets themselves), so neither of the harness's two processes has any; then runs the harness
  (`sandbox_harness`, its source in the config) in this same interpreter, with no exec: an
  interpreter start is most of what a sandboxed run costs. The harness splits into the program and
  the checker, each dropping to a private uid of its own when root; nothing secret is in this
  process's memory (the tests arrive as a descriptor only the checker reads).

Every process asks to be SIGKILLed when its parent dies, so killing the setup process (as the
scoring worker does on timeout) takes the sandbox down. The descriptors the harness needs (program,
tests, verdict pipe) are inherited; the setup and init processes close theirs once they have forked.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 24, 28, 38
SECUREBITS_LOCKED_NO_ROOT = 0xEF  # NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE set, KEEP_CAPS clear; all locked
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 442, -100, 0x8000, 0x1, 0x2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
MNT_DETACH = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
DEVICES = ("null", "zero", "random", "urandom")
PRIVATE_WORKDIR = "/tmp"

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


def _expose(root: str, path: str) -> None:
    """Show `path` (a directory, a file or a symlink of the machine) at the same place under `root`."""
    inside = root + path
    os.makedirs(os.path.dirname(inside), mode=0o755, exist_ok=True)
    if os.path.islink(path):
        os.symlink(os.readlink(path), inside)
    elif os.path.isdir(path):
        os.makedirs(inside, mode=0o755, exist_ok=True)
        _mount(path, inside, None, MS_BIND | MS_REC)
    elif os.path.exists(path):
        open(inside, "w").close()
        _mount(path, inside, None, MS_BIND)


def _enter_private_root(config: dict) -> None:
    """Build the private root (see the module docstring) and make it this namespace's `/`."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = config["root"]
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for path in config["expose"]:
        _expose(root, path)
    for device in DEVICES:
        _expose(root, f"/dev/{device}")
    for directory in ("/proc", PRIVATE_WORKDIR):
        os.makedirs(root + directory, mode=0o755, exist_ok=True)
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    _check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, root.encode(), AT_RECURSIVE, ctypes.byref(attr),
                         ctypes.sizeof(attr)), "mount_setattr(read-only, recursive)")
    owner = config["uids"]["program"] if config["uids"] else 0
    _mount("tmpfs", root + PRIVATE_WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={config['disk_bytes']},mode=700,uid={owner},gid={owner}")
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(f"pivot_root: no syscall number known for {os.uname().machine}")
    os.chdir(root)
    _check(_libc.syscall(number, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")  # the old root was stacked under the new
    os.chdir("/")


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


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def _give_up_capabilities() -> None:
    """Root of a user namespace gives up every capability, and can get none back (not through exec either)."""
    _check(_libc.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_NO_ROOT, 0, 0, 0), "prctl(PR_SET_SECUREBITS)")
    capability = 0
    while _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) == 0:
        capability += 1
    empty = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; twice (64 capabilities)
    _check(_libc.capset(ctypes.byref(_CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), empty), "capset(none)")


def _run(config: dict, report: dict) -> None:
    """The runner: no new privileges, the limits, then the harness. Never returns."""
    try:
        _die_with_parent()
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        if config["uids"] is None and report.get("user_namespace") is True:
            _give_up_capabilities()
        processes = config["max_processes"]
        if report["process_cap"] == "relative":  # NPROC counts all of this user's tasks: allow that many more
            processes += _tasks_of(os.getuid())
        limits = {resource.RLIMIT_CPU: (config["cpu_seconds"], config["cpu_seconds"] + 1),
                  resource.RLIMIT_AS: (config["memory_bytes"],) * 2,
                  resource.RLIMIT_FSIZE: (config["disk_bytes"],) * 2,
                  resource.RLIMIT_NPROC: (processes,) * 2,
                  resource.RLIMIT_CORE: (0, 0)}
        for kind, value in limits.items():
            resource.setrlimit(kind, value)
        workdir = PRIVATE_WORKDIR if report.get("private_filesystem") is True else config["workdir"]
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR=workdir)
        uids = config["uids"] or {}
        harness: dict = {"__name__": "sandbox_harness"}
        exec(compile(config["harness"], "sandbox_harness", "exec", dont_inherit=True), harness)
        main = harness["main"]
        del config["harness"], harness  # the program needs none of it
    except BaseException as exc:
        os.write(2, f"sandbox: could not start the program: {exc}\n".encode())
        os._exit(125)
    main({"fds": {"program": config["program_fd"], "check": config["check_fd"], "verdict": config["verdict_fd"]},
          "program_uid": uids.get("program"), "checker_uid": uids.get("checker")})


def _close_harness_descriptors(config: dict) -> None:
    for key in ("program_fd", "check_fd", "verdict_fd"):
        if config[key] is not None:
            os.close(config[key])


def _init(config: dict, report: dict) -> None:
    """PID 1 of the sandbox (when the PID namespace exists): start the runner, reap, exit. Never returns."""
    try:
        _die_with_parent()
        if report.get("pid_namespace") is True and report.get("private_filesystem") is True:
            if not _attempt(report, "private_proc", lambda: _mount(
                    "proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")):
                report["private_proc"] += " (the program sees an empty /proc)"  # e.g. in a user namespace
        if config["uids"] is not None:
            report["process_cap"] = "RLIMIT_NPROC for the private uids"
        elif report.get("user_namespace") is True:
            report["process_cap"] = "RLIMIT_NPROC counted in the user namespace"
        else:
            report["process_cap"] = "relative"
        with os.fdopen(config["report_fd"], "w") as pipe:  # closed before the runner exists: it cannot forge it
            json.dump(report, pipe)
        runner = os.fork()
        if runner == 0:
            _run(config, report)
        _close_harness_descriptors(config)
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
        _attempt(report, "private_filesystem", lambda: _enter_private_root(config))
    else:
        report["private_filesystem"] = "no mount namespace"
    init = os.fork()
    if init == 0:
        _init(config, report)
    os.close(config["report_fd"])
    _close_harness_descriptors(config)
    _, status = os.waitpid(init, 0)
    sys.stdout.flush()
    os._exit(os.waitstatus_to_exitcode(status) % 256)


if __name__ == "__main__":
    main(sys.argv[1])
