"""The last step of a sandboxed run: the program in one process, the verdict in another it cannot reach.

`sandbox_child`'s runner runs this file's source, in its own interpreter, once the sandbox is set up
(standard library only; importable as a module too, for its codec), and calls `main`. It forks at
once, before it has read anything but its config, into two processes joined by two pipes:

* **the program** (the child): drops to its own uid (root) or keeps the capability-less identity the
  sandbox gave it; closes every descriptor the checker owns (the tests, the verdict pipe); waits for
  the checker's first message, then runs the program files (setup code, then the candidate's code)
  in one module namespace named "solution". After that it only answers calls: a function name and
  arguments in, the return value (or the exception's type and message) out.
* **the checker** (the parent): drops to another uid (root), or marks itself non-dumpable, so the
  program can neither ptrace it nor read its memory or descriptors through /proc; then reads the
  tests from a descriptor only it holds, runs the setup code and the tests in a namespace of its own,
  where each function the tests take from the program is a proxy that calls it across the pipes; and
  writes the verdict to a pipe only it holds: `pass` when every test ran without an exception.

What crosses from the program to the checker is plain data, decoded by the checker into fresh
objects of its own: None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset,
and instances of classes the setup code defines (rebuilt from their attributes with the checker's own
class). Subclasses (a namedtuple, a Counter, an IntEnum) travel as their plain base type. So the
tests compare the checker's objects with the checker's `==`, `isinstance` and builtins: an object
whose `__eq__` is always true never leaves the program's process, and nothing the program patches
(builtins, modules, `sys.modules`, frames, exit hooks) exists in the checker. Anything else as a
result (a generator, a function, a class instance of the program's) fails the test that receives it.
A test takes from the program only the names it reads without defining them, never a builtin, plus
the entry point; a name bound to a module there (`import math`) is imported by the checker itself
when it is the name of a standard-library module (the module of that name: the program has no say
in which).
"""

from __future__ import annotations

import builtins
import json
import os
import symtable
import sys

MAX_MESSAGE = 64 << 20  # bytes of one JSON message from the program; a larger one fails the test
MAX_DEPTH = 200  # nesting of a value (lists in lists...)
PR_SET_DUMPABLE = 4
_PLAIN = (type(None), bool, int, float, str)
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
_UNMAPPED = (StopIteration, StopAsyncIteration)  # raised in the checker, these would change control flow


class ProgramError(Exception):
    """The program raised an exception that is not a builtin one (the test may catch it, as any other)."""


class BrokenProtocol(BaseException):
    """The program ended, or sent what is not a reply or not plain data: the sample fails, whatever
    the tests catch (a BaseException, so `except Exception` in a test does not swallow it)."""


def encode(value, classes: dict, depth: int = 0):
    """`value` as JSON-ready data (see the module docstring); TypeError for anything else."""
    if depth > MAX_DEPTH:
        raise TypeError("the value is nested too deeply")
    kind = type(value)
    if kind in _PLAIN:
        if kind is int and value.bit_length() > 4000:  # past str(int)'s digit limit
            return ["int", format(value, "x")]
        return value
    inner = depth + 1
    for name, base in _SEQUENCES.items():
        if isinstance(value, base):
            return [name, [encode(item, classes, inner) for item in base.__iter__(value)]]
    if isinstance(value, dict):
        return ["dict", [[encode(k, classes, inner), encode(v, classes, inner)] for k, v in dict.items(value)]]
    if isinstance(value, bool | int):  # a subclass (IntEnum): bool cannot be subclassed
        return encode(int.__int__(value), classes, depth)
    if isinstance(value, float | str):
        return encode(float.__float__(value) if isinstance(value, float) else str.__str__(value), classes, depth)
    if isinstance(value, complex):
        return ["complex", complex.__complex__(value).real, complex.__complex__(value).imag]
    if isinstance(value, bytes | bytearray):
        return ["bytes" if isinstance(value, bytes) else "bytearray", bytes(value).hex()]
    if classes.get(kind.__name__) is kind and hasattr(value, "__dict__"):
        return ["object", kind.__name__, [[k, encode(v, classes, inner)] for k, v in vars(value).items()]]
    raise TypeError(f"a {kind.__qualname__} is not plain data (see the `code` scorer's rules)")


def decode(data, classes: dict, depth: int = 0):
    """The value `encode` gave `data` for, built from scratch; ValueError for anything malformed."""
    if depth > MAX_DEPTH:
        raise ValueError("the value is nested too deeply")
    if type(data) in _PLAIN:
        return data
    if type(data) is not list or not data or type(data[0]) is not str:
        raise ValueError(f"malformed value {str(data)[:80]!r}")
    tag, inner = data[0], depth + 1
    if tag in _SEQUENCES and len(data) == 2 and type(data[1]) is list:
        return _SEQUENCES[tag](decode(item, classes, inner) for item in data[1])
    if tag == "dict" and len(data) == 2 and type(data[1]) is list:
        return {decode(k, classes, inner): decode(v, classes, inner) for k, v in _pairs(data[1])}
    if tag == "int" and len(data) == 2 and type(data[1]) is str:
        return int(data[1], 16)
    if tag == "complex" and len(data) == 3 and all(type(x) in (int, float) for x in data[1:]):
        return complex(data[1], data[2])
    if tag in ("bytes", "bytearray") and len(data) == 2 and type(data[1]) is str:
        return (bytes if tag == "bytes" else bytearray).fromhex(data[1])
    if tag == "object" and len(data) == 3 and type(data[1]) is str and data[1] in classes:
        instance = object.__new__(classes[data[1]])
        instance.__dict__.update({str(k): decode(v, classes, inner) for k, v in _pairs(data[2])})
        return instance
    raise ValueError(f"malformed value {str(data)[:80]!r}")


def _pairs(items) -> list:
    if type(items) is not list or not all(type(i) is list and len(i) == 2 for i in items):
        raise ValueError("malformed pairs")
    return items


class Channel:
    """One JSON message per line over a pair of pipes."""

    def __init__(self, read_fd: int, write_fd: int):
        self.reader = os.fdopen(read_fd, "rb")
        self.write_fd = write_fd

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.write_fd, data):]

    def receive(self) -> dict:
        line = self.reader.readline(MAX_MESSAGE + 1)
        if not line.endswith(b"\n"):
            raise BrokenProtocol("the program ended" if not line else "the program sent an oversized message")
        try:
            message = json.loads(line)
        except ValueError as exc:  # not catchable by a test that expects a ValueError
            raise BrokenProtocol(f"the program sent what is not JSON: {exc}") from None
        if type(message) is not dict:
            raise BrokenProtocol("the program broke the protocol")
        return message


def _drop_to(uid) -> None:
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError(f"could not switch to uid {uid}")


def _flush() -> None:
    """Write out what the program printed (a program that closed or broke stdout only loses its output)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _read_json(fd: int):
    with os.fdopen(fd, "rb") as file:
        return json.loads(file.read())


def serve_program(channel: Channel, program_fd: int) -> None:
    """The program's process: run the files, then answer calls until the checker closes the pipe."""
    start = channel.receive()
    files = _read_json(program_fd)
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        for name, source in files:
            exec(compile(source, name, "exec", dont_inherit=True), namespace)
    except BaseException as exc:  # SystemExit too: the program did not run to its end
        channel.send({"error": f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    finally:
        _flush()
    classes = {n: namespace[n] for n in start["classes"] if isinstance(namespace.get(n), type)}
    kinds = {}
    for name in start["names"]:
        value = namespace.get(name)
        if type(value) is type(os):
            kinds[name] = ["module"]
        elif callable(value):
            kinds[name] = ["function"]
    channel.send({"ready": kinds})
    while True:
        try:
            call = channel.receive()
        except BrokenProtocol:  # the checker is done
            return
        try:
            function = namespace[call["call"]]
            result = function(*decode(call["args"], classes), **decode(call["kwargs"], classes))
        except BaseException as exc:
            _flush()
            channel.send({"raise": [type(exc).__name__, str(exc)[:2000]]})
            continue
        _flush()  # the sandbox may end as soon as the checker has its last reply
        try:
            channel.send({"return": encode(result, classes)})
        except (TypeError, ValueError, RecursionError) as exc:
            channel.send({"unsendable": str(exc)[:2000]})


def _proxy(channel: Channel, name: str, classes: dict):
    """A function that calls the program's `name` across the pipes and returns the checker's own copy."""

    def call(*args, **kwargs):
        channel.send({"call": name, "args": encode(list(args), classes), "kwargs": encode(kwargs, classes)})
        reply = channel.receive()
        if "return" in reply:
            try:
                return decode(reply["return"], classes)
            except Exception as exc:  # malformed, unhashable keys, too deep: never a value a test may catch
                raise BrokenProtocol(f"the program's result cannot be decoded: {exc!r}"[:2000]) from None
        if type(reply.get("raise")) is list and len(reply["raise"]) == 2:
            kind, message = (str(part) for part in reply["raise"])
            exception = getattr(builtins, kind, None)
            if isinstance(exception, type) and issubclass(exception, Exception) and \
                    not issubclass(exception, _UNMAPPED):
                raise exception(message)
            raise ProgramError(f"{kind}: {message}")
        raise BrokenProtocol(f"the program's result cannot be compared: {str(reply.get('unsendable'))[:2000]}")

    call.__name__ = call.__qualname__ = name
    return call


def names_taken(tests: str, defined, entry_point) -> list[str]:
    """The names `tests` read from the module scope without binding them there, less builtins and the
    names in `defined` (the setup's); plus `entry_point` when given."""
    module = symtable.symtable(tests, "tests", "exec")
    bound = {s.get_name() for s in module.get_symbols() if s.is_assigned() or s.is_imported()}
    found, tables = set(), [module]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        for symbol in table.get_symbols():
            free = symbol.is_global() if table is not module else not (symbol.is_assigned() or symbol.is_imported())
            if free and symbol.is_referenced():
                found.add(symbol.get_name())
    names = found - bound - set(dir(builtins)) - set(defined)
    return sorted(names | ({entry_point} if entry_point else set()))


def check_program(channel: Channel, check_fd) -> None:
    """The checker's process: run the setup and the tests against proxies; raise when a test fails."""
    check = _read_json(check_fd) if check_fd is not None else {"setup": "", "tests": "", "entry_point": None}
    namespace = {"__name__": "tests", "__builtins__": builtins}
    exec(compile(check["setup"], "setup", "exec", dont_inherit=True, optimize=0), namespace)
    classes = {n: v for n, v in namespace.items() if isinstance(v, type) and v.__module__ == "tests"}
    channel.send({"names": names_taken(check["tests"], namespace, check["entry_point"]), "classes": sorted(classes)})
    reply = channel.receive()
    if "ready" not in reply or type(reply["ready"]) is not dict:
        raise BrokenProtocol(f"the program did not run to its end: {str(reply.get('error'))[:2000]}")
    for name, kind in reply["ready"].items():
        if kind == ["function"]:
            namespace[name] = _proxy(channel, name, classes)
        elif kind == ["module"] and name in sys.stdlib_module_names:  # the module of that name, never another
            namespace[name] = __import__(name)
    exec(compile(check["tests"], "tests", "exec", dont_inherit=True, optimize=0), namespace)


def main(config: dict) -> None:
    """Fork into the program and the checker (see the module docstring). Never returns."""
    calls_read, calls_write = os.pipe()
    results_read, results_write = os.pipe()
    fds = config["fds"]
    if os.fork() == 0:
        try:
            for fd in (fds["check"], fds["verdict"], calls_write, results_read):
                if fd is not None:
                    os.close(fd)
            _drop_to(config["program_uid"])
            serve_program(Channel(calls_read, results_write), fds["program"])
            code = 0
        except BaseException:
            code = 1
        os._exit(code)
    verdict = b"fail"
    try:
        for fd in (fds["program"], calls_read, results_write):
            os.close(fd)
        _drop_to(config["checker_uid"])
        if not os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK):  # no mount namespace exposed it
            os.write(2, f"sandbox: could not start the program: uid {os.getuid()} cannot read the Python "
                        f"installation {os.path.dirname(os.__file__)}\n".encode())
            os._exit(125)
        if config["checker_uid"] is None:  # the same uid as the program: keep it out of /proc/<pid>/mem, fd
            import ctypes

            if ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
                raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")
        check_program(Channel(results_read, calls_write), fds["check"])
        verdict = b"pass"
    except BaseException:
        import traceback  # only now: most of the start-up cost is imports

        sys.stderr.write("checker: " + traceback.format_exc(limit=-3))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(fds["verdict"], verdict)
        os._exit(0)

