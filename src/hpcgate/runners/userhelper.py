"""The per-user helper: a small long-lived process that holds one user's identity.

The gateway starts it through the local runner's own identity switch (``chroot
--userspec``, so it has the user's uid, gid and groups and nothing of root), hands it
one end of a socket pair, and from then on asks it to

* write a file (``write``): opened and written here, as the user, with no new process,
  and then, if the request carries one, make a call (``then``, below): a job script and
  its submit in one exchange. The stand-in is loaded first; the helper then says
  ``written`` and the call's answer is the request's (no call if the write fails);
* start a program (``spawn``): ``posix_spawn`` (a vfork: cheap, since no ids change) with
  the three pipe ends the gateway sent along (``SCM_RIGHTS``), in a new session, and
  report its pid at once and its exit status when it ends (watched through a pidfd);
* answer a program in its own process (``call``): a *stand-in* module, whose source the
  gateway sends with its first call (it is never read from a path the user could
  influence), and whose ``run(argv, env, cwd)`` returns the program's exit status and
  output, or None when the program itself must run (see
  :meth:`hpcgate.schedulers.base.Scheduler.stand_ins`). Calls run on call threads (at
  most ``MAX_CALLS``, more calls wait their turn), started as calls come and ending when
  none came for ``LINGER`` seconds: a slow call never holds up the other requests, a
  busy helper does not start a thread per call, and an idle one has no thread to move
  into an action's cgroups with it.

It never decides anything: every path and argument vector comes from the gateway, which
also places it in the action's cgroups for the instant of each spawn (see
:mod:`hpcgate.runners.local_helper`). When the gateway's end of the socket closes, it
exits. Only the standard library is used: this module's source runs as ``python3 -I -S``.

Frames, both ways: 4-byte big-endian JSON length, 4-byte payload length, JSON, payload.
"""

from __future__ import annotations

import array
import collections
import contextlib
import json
import os
import selectors
import socket
import stat
import struct
import sys
import threading
from types import ModuleType

FRAME = struct.Struct("!II")
MAX_FDS = 3
MAX_CALLS = 8
_sending = threading.Lock()
_queue_lock = threading.Lock()
_call_queued = threading.Condition(_queue_lock)
_queued: collections.deque[tuple[socket.socket, int, dict[str, object]]] = collections.deque()
_workers = 0
_waiting = 0  # call threads waiting for a call (each takes the next one queued)
LINGER = 0.25
"""Seconds a call thread waits for another call before it ends (starting one: ~0.2 ms)."""
_stand_ins: dict[str, ModuleType] = {}


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def _receive(sock: socket.socket) -> tuple[dict[str, object], bytes, list[int]]:
    fds = array.array("i")
    header, ancillary, _, _ = sock.recvmsg(
        FRAME.size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    if not header:
        raise EOFError
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    header += _read_exactly(sock, FRAME.size - len(header))
    json_size, payload_size = FRAME.unpack(header)
    message = json.loads(_read_exactly(sock, json_size))
    payload = _read_exactly(sock, payload_size) if payload_size else b""
    return message, payload, list(fds)


def _send(sock: socket.socket, message: dict[str, object]) -> None:
    body = json.dumps(message).encode()
    with _sending:
        sock.sendall(FRAME.pack(len(body), 0) + body)


def _load(name: str, source: str) -> None:
    """Make the stand-in ``name`` from ``source`` (sent with its first call, and loaded
    before that call is queued, so every later call finds it)."""
    if name not in _stand_ins:
        module = ModuleType(f"_stand_in_{len(_stand_ins)}")
        exec(compile(source, name, "exec"), module.__dict__)
        _stand_ins[name] = module


def _call(sock: socket.socket, request: int, message: dict[str, object]) -> None:
    """Answer a program through its stand-in (on a call thread)."""
    answer: dict[str, object] = {"id": request}
    try:
        argv = [str(word) for word in message["argv"]]  # type: ignore[attr-defined]
        environment = {str(k): str(v) for k, v in message["env"].items()}  # type: ignore[attr-defined]
        module = _stand_ins.get(str(message["module"]))
        if module is None:
            raise OSError(0, f"the stand-in {message['module']} was never sent")
        outcome = module.run(argv, environment, str(message["cwd"]))
        if outcome is None:
            answer["declined"] = True
        else:
            status, stdout, stderr = outcome
            answer |= {"status": int(status), "stdout": str(stdout), "stderr": str(stderr)}
    except Exception as exc:  # a stand-in's own failure: whether it sent anything is unknown
        answer = {"id": request, "errno": 0, "reason": repr(exc), "stage": "call"}
    _send(sock, answer)


def _loaded(sock: socket.socket, request: int, message: dict[str, object]) -> bool:
    """Load the call's stand-in if its source came with it (before anything else of the
    request, so that a later call finds it whatever became of this one); False, with the
    error sent as the request's answer, when it does not load."""
    try:
        if "source" in message:
            _load(str(message["module"]), str(message.pop("source")))
    except Exception as exc:
        _send(sock, {"id": request, "errno": 0, "reason": repr(exc)})
        return False
    return True


def _start_call(sock: socket.socket, request: int, message: dict[str, object]) -> None:
    """Queue a call for the call threads: up to ``MAX_CALLS``, started as calls come
    (unless one waits for it) and ending ``LINGER`` seconds after the last one, so an
    idle helper is one thread."""
    global _workers
    with _queue_lock:
        _queued.append((sock, request, message))
        if len(_queued) <= _waiting:  # a waiting thread takes it
            _call_queued.notify()
            return
        if _workers >= MAX_CALLS:
            return
        _workers += 1
    try:
        threading.Thread(target=_work, daemon=True).start()
    except RuntimeError:  # no thread (memory): with no other to take it, sbatch runs
        with _queue_lock:
            _workers -= 1
            stranded = [] if _workers else list(_queued)
            if stranded:
                _queued.clear()
        for _, number, _ in stranded:
            _send(sock, {"id": number, "declined": True})


def _work() -> None:
    global _workers, _waiting
    while True:
        with _queue_lock:
            if not _queued:
                _waiting += 1
                _call_queued.wait(LINGER)
                _waiting -= 1
            if not _queued:
                _workers -= 1
                return
            sock, request, message = _queued.popleft()
        with contextlib.suppress(OSError):  # the gateway's end is gone: the helper ends
            _call(sock, request, message)


def _failure(request: int, exc: OSError) -> dict[str, object]:
    stage = "cwd" if isinstance(exc, _NoDirectory) else "exec"
    return {
        "id": request,
        "errno": exc.errno or 0,
        "reason": exc.strerror or str(exc),
        "stage": stage,
    }


class _NoDirectory(OSError):
    """The working directory could not be entered (as opposed to the program)."""


def _write(path: str, data: bytes) -> None:
    """Create or replace ``path`` with ``data``, making its parents (all as the user).

    Opened without blocking, so a FIFO with no reader fails instead of hanging; anything
    but a regular file is refused before a byte is written.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "Not a regular file")
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _write_then_call(
    sock: socket.socket, request: int, message: dict[str, object], payload: bytes
) -> None:
    """Write ``payload`` to the request's path; then, if it carries a call (``then``: one
    that reads the file), say ``written`` and queue the call, whose answer is the
    request's. The call's stand-in is loaded first, so that a later call finds it whatever
    becomes of this write; a failed write answers with ``stage: write``, calling nothing."""
    then = message.get("then")
    call = then if isinstance(then, dict) else None
    if call is not None and not _loaded(sock, request, call):
        return  # its stand-in does not load: nothing written, nothing called
    try:
        _write(str(message["path"]), payload)
    except OSError as exc:
        _send(sock, _failure(request, exc) | {"stage": "write"})
        return
    if call is None:
        _send(sock, {"id": request})
    else:
        _send(sock, {"id": request, "written": True})
        _start_call(sock, request, call)


def serve(sock: socket.socket) -> None:
    """Answer the gateway's requests until it closes its end."""
    os.set_inheritable(sock.fileno(), False)  # never passed on to a program it starts
    os.chdir("/")
    watched = selectors.DefaultSelector()
    watched.register(sock, selectors.EVENT_READ)
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        for key, _ in watched.select():
            if key.fileobj is not sock:
                pidfd = key.fd
                pid = children.pop(pidfd)
                watched.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                _send(sock, {"exit": pid, "status": os.waitstatus_to_exitcode(status)})
                continue
            try:
                message, payload, fds = _receive(sock)
            except EOFError:
                return
            request = int(message["id"])  # type: ignore[call-overload]
            try:
                if message["op"] == "write":
                    _write_then_call(sock, request, message, payload)
                elif message["op"] == "call":
                    if _loaded(sock, request, message):
                        _start_call(sock, request, message)
                elif message["op"] == "spawn":
                    pid = _spawn(message, fds)
                    pidfd = os.pidfd_open(pid)
                    children[pidfd] = pid
                    watched.register(pidfd, selectors.EVENT_READ)
                    _send(sock, {"id": request, "pid": pid})
                else:
                    _send(sock, {"id": request, "errno": 0, "reason": "unknown request"})
            except OSError as exc:
                _send(sock, _failure(request, exc))
            finally:
                for fd in fds:
                    os.close(fd)


def _spawn(message: dict[str, object], fds: list[int]) -> int:
    if len(fds) != MAX_FDS:
        raise OSError(0, "a spawn needs stdin, stdout and stderr")
    argv = [str(word) for word in message["argv"]]  # type: ignore[attr-defined]
    environment = {str(k): str(v) for k, v in message["env"].items()}  # type: ignore[attr-defined]
    try:
        os.chdir(str(message["cwd"]))
    except OSError as exc:
        raise _NoDirectory(exc.errno, exc.strerror) from None
    try:
        return os.posix_spawn(
            argv[0],
            argv,
            environment,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
            setsid=True,
        )
    finally:
        os.chdir("/")


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
    os._exit(0)  # without waiting for a call still in flight: its answer has no reader
