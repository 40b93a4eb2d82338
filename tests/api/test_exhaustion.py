"""Resource exhaustion without logging in: slow clients, many connections, huge bodies and
heads, deeply nested JSON. Every test runs against a real gateway process and measures it
from /proc: its open descriptors, its resident memory (peak, reset before each attack).
"""

from __future__ import annotations

import contextlib
import json
import resource
import select
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import (
    PASSWORDS,
    Server,
    gateway_config,
    ok_output,
    start_server,
    stop_server,
    wait_for,
)

HEADER_TIMEOUT = 2
BODY_TIMEOUT = 3
MAX_CONNECTIONS = 400
SLOW_CLIENTS = 300
MiB = 1024 * 1024
LOGIN_LIMIT = 64 * 1024  # the defaults, which these tests leave alone
BODY_LIMIT = 4 * MiB
HEADER_LIMIT = 32 * 1024
MEMORY_BOUND = 64 * MiB


@pytest.fixture(scope="module")
def gateway(cluster: None, public_dir: Path) -> Iterator[Server]:
    """A gateway with short deadlines, started with a low soft limit on open files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))
    try:
        server = start_server(
            gateway_config(public_dir, "local", None)
            + f"""
[server]
header_timeout = {HEADER_TIMEOUT}
body_timeout = {BODY_TIMEOUT}
max_connections = {MAX_CONNECTIONS}
""",
            public_dir,
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    yield server
    stop_server(server)


# what the gateway process holds


def open_sockets(server: Server) -> int:
    """The gateway's open sockets: its descriptors less the pipes its probes come and go with."""
    links = []
    for fd in Path(f"/proc/{server.process.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            links.append(fd.readlink())
    return sum(str(link).startswith("socket:") for link in links)


def memory_kib(server: Server, field: str) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{server.process.pid}/status")


class PeakMemory:
    """The growth of the gateway's peak resident memory over a ``with`` block, in bytes."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.growth = 0

    def __enter__(self) -> PeakMemory:
        Path(f"/proc/{self.server.process.pid}/clear_refs").write_text("5")  # peak := now
        self.before = memory_kib(self.server, "VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = (memory_kib(self.server, "VmHWM") - self.before) * 1024


# raw HTTP: what no well-behaved client library would send


def connect(server: Server) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def send_until_answered(sock: socket.socket, head: bytes, body: Iterable[bytes]) -> None:
    """Send ``head`` then ``body`` until the gateway answers or stops listening."""
    try:
        sock.sendall(head)
        for chunk in body:
            if select.select([sock], [], [], 0)[0]:
                return  # an answer (or the close) is waiting
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        return


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """The status, headers and JSON body of the one answer on ``sock``."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        while len(body) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except ConnectionResetError:
        pytest.fail(f"the connection was reset; received so far: {data[:300]!r}")
    assert data, "the gateway closed the connection without an answer"
    return int(lines[0].split()[1]), headers, json.loads(body)


def envelope_error(answer: tuple[int, dict[str, str], Any], status: int) -> str:
    code, _, body = answer
    assert code == status, answer
    assert body["status"] == "ERROR" and body["status_code"] == status, body
    error: str = body["error"]
    return error


def post_head(path: str, content_type: str, *, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: {content_type}\r\n"
        f"{framing}\r\n\r\n"
    ).encode()


def repeated(chunk: bytes, total: int) -> Iterator[bytes]:
    for _ in range(total // len(chunk)):
        yield chunk


def chunked(chunk: bytes, total: int) -> Iterator[bytes]:
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    yield from repeated(framed, total // len(chunk) * len(framed))


def status_answers(server: Server) -> bool:
    return httpx.get(f"{server.url}/api/job", timeout=10).status_code == 200


def closed_by_the_gateway(sock: socket.socket) -> bool:
    """Whether the gateway has closed ``sock`` (after an answer or not); never blocks."""
    try:
        while select.select([sock], [], [], 0)[0]:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    return False


# slow clients and many connections


def test_the_open_files_limit_is_raised_to_the_hard_limit_at_start(gateway: Server) -> None:
    limits = Path(f"/proc/{gateway.process.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, line


def test_heads_that_never_finish_are_closed_and_status_still_answers(gateway: Server) -> None:
    baseline = open_sockets(gateway)
    slow = [connect(gateway) for _ in range(SLOW_CLIENTS)]
    try:
        for sock in slow:
            sock.sendall(b"GET /api/job HTTP/1.1\r\nHost: gateway\r\n")  # never the blank line
        wait_for(
            lambda: open_sockets(gateway) >= SLOW_CLIENTS,
            what="the gateway to accept every slow connection",
        )
        assert status_answers(gateway)  # the others are still served meanwhile
        wait_for(
            lambda: all(closed_by_the_gateway(sock) for sock in slow),
            timeout=HEADER_TIMEOUT + 20,
            what="the gateway to close every slow connection after server.header_timeout",
        )
        wait_for(
            lambda: open_sockets(gateway) <= baseline + 10,
            what="the gateway to release the slow connections' descriptors",
        )
        assert status_answers(gateway)
    finally:
        for sock in slow:
            sock.close()


def test_a_slow_head_is_answered_408_even_when_it_trickles(gateway: Server) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /api/job HTTP/1.1\r\nHost: gateway\r\n")

        def one_more_header_line_then_closed() -> bool:
            if select.select([sock], [], [], 0)[0]:
                return True
            sock.sendall(b"X-Trickle: a\r\n")  # the connection is never idle
            return False

        wait_for(
            one_more_header_line_then_closed,
            timeout=HEADER_TIMEOUT + 20,
            what="the gateway to give up on a trickled head",
        )
        assert "server.header_timeout" in envelope_error(read_answer(sock), 408)


def test_a_body_that_never_finishes_is_answered_408(gateway: Server) -> None:
    with connect(gateway) as sock:
        sock.sendall(post_head("/api/auth", "application/x-www-form-urlencoded", length=100))
        sock.sendall(b"username=alice")  # then nothing
        wait_for(
            lambda: select.select([sock], [], [], 0)[0],
            timeout=BODY_TIMEOUT + 20,
            what="the gateway to give up on the body",
        )
        assert "server.body_timeout" in envelope_error(read_answer(sock), 408)
    assert status_answers(gateway)


def test_connections_past_the_cap_are_refused_with_a_clear_503(gateway: Server) -> None:
    wait_for(lambda: open_sockets(gateway) < 20, what="the earlier tests' connections to go")
    held = [connect(gateway) for _ in range(MAX_CONNECTIONS)]
    try:
        wait_for(
            lambda: open_sockets(gateway) > MAX_CONNECTIONS,  # and the listening one
            what="the gateway to accept the connections up to its cap",
        )
        with connect(gateway) as sock:
            sock.sendall(b"GET /api/job HTTP/1.1\r\nHost: gateway\r\n\r\n")
            answer = read_answer(sock)
        assert f"{MAX_CONNECTIONS} connections" in envelope_error(answer, 503)
        assert "server.max_connections" in answer[2]["error"]
        assert answer[1].get("retry-after")
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: status_answers(gateway), what="the gateway to serve again")


# large bodies and heads


def test_a_declared_oversized_body_is_refused_before_it_is_read(gateway: Server) -> None:
    for path, limit in (("/api/auth", LOGIN_LIMIT), ("/api/job/ln3", BODY_LIMIT)):
        with PeakMemory(gateway) as memory, connect(gateway) as sock:
            head = post_head(path, "application/x-www-form-urlencoded", length=300 * MiB)
            send_until_answered(sock, head, repeated(b"a" * 65536, 300 * MiB))
            error = envelope_error(read_answer(sock), 413)
        assert str(limit) in error and path in error, error
        assert memory.growth < MEMORY_BOUND, f"{path}: peak memory grew {memory.growth} bytes"


def test_a_read_declaring_an_oversized_body_is_refused_like_any_request(gateway: Server) -> None:
    """The cached reads, answered in front of the middleware, leave a request with a body
    to the body limits."""
    with connect(gateway) as sock:
        sock.sendall(
            b"GET /api/job HTTP/1.1\r\nHost: gateway\r\nContent-Length: %d\r\n\r\n" % (300 * MiB)
        )
        error = envelope_error(read_answer(sock), 413)
    assert str(BODY_LIMIT) in error and "GET /api/job" in error, error


def test_chunked_bodies_are_counted_as_they_stream(gateway: Server) -> None:
    alice = gateway.login("alice")  # past the login, routes read what they are sent
    bearer = alice.headers["Authorization"]
    alice.close()
    answers: list[tuple[int, dict[str, str], Any]] = []

    def attack(path: str, content_type: str, first: bytes) -> None:
        with connect(gateway) as sock:
            head = post_head(path, content_type, length=None)
            head = head.replace(b"\r\n\r\n", f"\r\nAuthorization: {bearer}\r\n\r\n".encode())
            head += b"%x\r\n%s\r\n" % (len(first), first)
            send_until_answered(sock, head, chunked(b"a" * 65536, 300 * MiB))
            answers.append(read_answer(sock))

    attacks = [
        ("/api/auth", "application/x-www-form-urlencoded", b"username="),
        ("/api/auth", "application/json", b'{"username": "'),
        ("/api/job/ln3", "application/x-www-form-urlencoded", b"jobscript="),
        (
            "/api/command/ln3",
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="command"\r\n\r\n',
        ),
    ]
    with PeakMemory(gateway) as memory:
        threads = [threading.Thread(target=attack, args=attack_) for attack_ in attacks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(answers) == len(attacks), answers
    errors = [envelope_error(answer, 413) for answer in answers]
    assert sum(f"{LOGIN_LIMIT} bytes" in error for error in errors) == 2, errors
    assert sum(f"{BODY_LIMIT} bytes" in error for error in errors) == 2, errors
    assert memory.growth < MEMORY_BOUND, f"peak memory grew {memory.growth} bytes"


def test_form_fields_are_counted(gateway: Server) -> None:
    with gateway.client() as client:
        many = "&".join(f"field{n}=x" for n in range(100))
        answer = client.post(
            "/auth", content=many, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert "fields" in envelope_of(answer, 400)
        parts = b"".join(
            b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % n
            for n in range(100)
        )
        answer = client.post(
            "/auth",
            content=parts + b"--b--\r\n",
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert "fields" in envelope_of(answer, 400)


def envelope_of(response: httpx.Response, status: int) -> str:
    body = response.json()
    assert response.status_code == status and body["status_code"] == status, body
    error: str = body["error"]
    return error


def test_a_huge_header_is_refused_with_431(gateway: Server) -> None:
    with PeakMemory(gateway) as memory, connect(gateway) as sock:
        head = b"GET /api/job HTTP/1.1\r\nHost: gateway\r\nX-Huge: "
        send_until_answered(sock, head, repeated(b"a" * 65536, 200 * MiB))
        error = envelope_error(read_answer(sock), 431)
    assert str(HEADER_LIMIT) in error and "server.max_header_bytes" in error
    assert memory.growth < MEMORY_BOUND, f"peak memory grew {memory.growth} bytes"
    with connect(gateway) as sock:  # many headers, each small, all in one write
        many = b"".join(b"X-Many-%d: %s\r\n" % (n, b"a" * 1000) for n in range(40))
        sock.sendall(b"GET /api/job HTTP/1.1\r\nHost: gateway\r\n" + many + b"\r\n")
        envelope_error(read_answer(sock), 431)
    with gateway.client() as client:  # a head near the cap is still fine
        assert client.get("/job", headers={"X-Big": "a" * (HEADER_LIMIT // 2)}).status_code == 200


# nested JSON


def test_deeply_nested_json_is_a_400_not_a_500(gateway: Server) -> None:
    json_type = {"content-type": "application/json"}
    with gateway.client() as client:
        for body in (
            "[" * 50_000,  # within the login's 64 KiB
            '{"username": ' + "[" * 5000 + "]" * 5000 + ', "password": "x"}',
            '{"username": ' + "[" * 20 + "]" * 20 + "}",
        ):
            answer = client.post("/auth", content=body, headers=json_type)
            assert "nests JSON" in envelope_of(answer, 400)
    alice = gateway.login("alice")
    try:
        for jobconf in ("[" * 100_000, '{"job_name": ' + "[" * 5000 + "]" * 5000 + "}"):
            answer = alice.post(
                "/job/ln3", data={"jobscript": "#!/bin/bash\ntrue\n", "jobconf": jobconf}
            )
            assert "jobconf" in envelope_of(answer, 400)
            answer = alice.post(
                "/job/ln3",
                content=json.dumps({"jobscript": "#!/bin/bash\ntrue\n", "jobconf": jobconf}),
                headers=json_type,
            )
            assert "jobconf" in envelope_of(answer, 400)
    finally:
        alice.close()


# and the legit largest request still passes


def test_the_largest_script_passes_even_percent_encoded(gateway: Server) -> None:
    script_bytes = gateway.config().limits.script_bytes
    filler = "é" * ((script_bytes - 64) // 2)  # two bytes each, six percent-encoded
    script = f"#!/bin/bash\n# {filler}\ntrue\n"
    assert len(script.encode()) <= script_bytes
    body = f"jobscript={quote(script)}&jobconf={quote(json.dumps({'time_limit': 1}))}"
    assert len(body) > 2.9 * script_bytes
    alice = gateway.login("alice")
    try:
        answer = alice.post(
            "/job/ln3",
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        jobid = ok_output(answer)["jobid"]
        alice.delete(f"/job/ln3/{jobid}")  # no need to run it
    finally:
        alice.close()


# keep-alive: which answers end the connection


def refused_upload_head(gateway: Server) -> bytes:
    """The head of alice's 8 MiB upload that may not replace a file that exists: it is
    answered (412) before its body is read."""
    alice = gateway.login("alice")
    bearer = alice.headers["Authorization"]
    alice.close()
    return (
        "PUT /api/file/ln3/home/alice/.bashrc HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: {bearer}\r\nIf-None-Match: *\r\n"
        f"Content-Length: {8 * MiB}\r\n\r\n"
    ).encode()


def test_an_answer_before_the_body_tells_the_client_the_connection_ends(gateway: Server) -> None:
    head = refused_upload_head(gateway)  # logs in: before the connection, not on its clock
    with connect(gateway) as sock:
        send_until_answered(sock, head, repeated(b"a" * 65536, 8 * MiB))
        answer = read_answer(sock)
        assert envelope_error(answer, 412)
        # a client that kept the connection for its next request would lose that request
        assert answer[1].get("connection") == "close", answer[1]
        wait_for(lambda: closed_by_the_gateway(sock), what="the connection to close")


def test_a_client_that_sends_its_whole_body_anyway_still_reads_the_early_answer(
    gateway: Server,
) -> None:
    # The gateway drains what is still coming before it closes: closing with unread data
    # would send a reset, which can destroy the answer before the client reads it.
    failures: list[BaseException] = []
    head = refused_upload_head(gateway)  # logs in: before the connection, not on its clock
    with connect(gateway) as sock:

        def send_everything() -> None:
            try:
                sock.sendall(head + b"a" * (8 * MiB))
            except OSError as exc:
                failures.append(exc)

        sender = threading.Thread(target=send_everything)
        sender.start()
        answer = read_answer(sock)
        sender.join(timeout=30)
    assert envelope_error(answer, 412) and answer[1].get("connection") == "close", answer
    assert not failures, f"the body could not be sent to its end: {failures}"


def test_a_request_pipelined_behind_another_is_answered(gateway: Server) -> None:
    # The login's head arrives while the status read is being answered; its body later.
    form = f"username=alice&password={quote(PASSWORDS['alice'])}".encode()
    with connect(gateway) as sock:
        sock.sendall(
            b"GET /api/job HTTP/1.1\r\nHost: gateway\r\n\r\n"
            + post_head("/api/auth", "application/x-www-form-urlencoded", length=len(form))
        )
        status, headers, body = read_answer(sock)
        assert status == 200 and headers.get("connection") != "close", headers
        sock.sendall(form)
        status, _, body = read_answer(sock)
        assert status == 200 and body["status"] == "OK", body
