"""The FILE module (/api/file): listings, streamed downloads and uploads, changes, and
every kind of bad input, as the user, over the local runner and over SSH/SFTP."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Server, error_of, ok_output, start_server, stop_server, wait_for

MiB = 1024 * 1024


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", *argv], capture_output=True, text=True, check=True
    )


@pytest.fixture
def home_dir() -> Iterator[Path]:
    """A fresh directory of alice's, in her home (removed afterwards)."""
    path = Path(f"/home/alice/files-test-{secrets.token_hex(4)}")
    as_user("alice", "mkdir", "-m", "755", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def bob_dir() -> Iterator[Path]:
    path = Path(f"/home/bob/files-test-{secrets.token_hex(4)}")
    as_user("bob", "mkdir", "-m", "755", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def url(path: Path | str, machine: str = "ln3") -> str:
    return f"/file/{machine}{path}"


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".hpcgate-" in name)


def test_machines_and_a_directory_listing_sorted_paged_and_typed(
    alice: httpx.Client, home_dir: Path
) -> None:
    assert {"name": "ln3", "description": "as deployed"} in ok_output(alice.get("/file"))
    as_user("alice", "sh", "-c", f"cd {home_dir} && printf abc > b.txt && mkdir a && ln -s b.txt c")
    odd = "new\nline ; $(x) 'q'"
    as_user("alice", "touch", str(home_dir / odd))
    answer = alice.get(url(home_dir))
    listing = ok_output(answer)
    assert answer.headers["x-total-count"] == "4"
    names = [entry["name"] for entry in listing]
    assert names == sorted(["a", "b.txt", "c", odd])
    by_name = {entry["name"]: entry for entry in listing}
    assert by_name["b.txt"] | {"date": ""} == {
        "name": "b.txt",
        "type": "file",
        "perms": "-rw-r--r--",
        "hardlinks": 1,
        "user": "alice",
        "group": "alice",
        "size": 3,
        "date": "",
        "symlink": "",
    }
    assert by_name["b.txt"]["date"].endswith("Z")
    assert by_name["a"]["type"] == "dir" and by_name["c"]["type"] == "link"
    assert by_name["c"]["symlink"] == "b.txt"
    answer = alice.get(url(home_dir), params={"limit": 2, "offset": 1})
    assert [entry["name"] for entry in ok_output(answer)] == names[1:3]
    assert (answer.headers["x-total-count"], answer.headers["x-offset"]) == ("4", "1")
    # a file without a view: its own entry
    [entry] = ok_output(alice.get(url(home_dir / "b.txt")))
    assert entry["name"] == "b.txt" and entry["size"] == 3
    # ~ is the home directory
    home = ok_output(alice.get("/file/ln3/~", params={"limit": 1000}))
    assert home_dir.name in [entry["name"] for entry in home]


def test_upload_download_ranges_views_and_checksum(alice: httpx.Client, home_dir: Path) -> None:
    data = b"".join(b"line %d\n" % i for i in range(1, 101))
    target = home_dir / "data.txt"
    answer = ok_output(alice.put(url(target), content=data))
    assert answer == {"location": str(target), "size": len(data)}
    assert target.read_bytes() == data and target.owner() == "alice"
    full = alice.get(url(target), params={"view": "read"})
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-length"] == str(len(data))
    assert full.headers["accept-ranges"] == "bytes" and full.headers["etag"]
    assert full.headers["last-modified"].endswith("GMT")
    part = alice.get(url(target), params={"view": "read"}, headers={"Range": "bytes=7-13"})
    assert part.status_code == 206 and part.content == data[7:14]
    assert part.headers["content-range"] == f"bytes 7-13/{len(data)}"
    tail = alice.get(url(target), params={"view": "read"}, headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    outside = alice.get(url(target), params={"view": "read"}, headers={"Range": "bytes=9999-"})
    assert "outside" in error_of(outside, 416)
    assert outside.headers["content-range"] == f"bytes */{len(data)}"
    download = alice.get(url(target), params={"download": "true"})
    assert download.content == data
    assert download.headers["content-disposition"] == "attachment; filename*=UTF-8''data.txt"
    assert ok_output(alice.get(url(target), params={"view": "head", "lines": 2})) == (
        "line 1\nline 2\n"
    )
    assert ok_output(alice.get(url(target), params={"view": "tail", "lines": 1})) == "line 100\n"
    checksum = ok_output(alice.get(url(target), params={"view": "checksum"}))
    assert checksum == {"path": str(target), "sha256": hashlib.sha256(data).hexdigest()}
    # replacing it: readers only ever see the old or the new file, never a mix
    ok_output(alice.put(url(target), content=b"new"))
    assert target.read_bytes() == b"new" and leftovers(home_dir) == []
    empty = home_dir / "empty"
    ok_output(alice.put(url(empty), content=b""))
    assert alice.get(url(empty), params={"view": "read"}).content == b""


def test_if_none_match_and_a_wrong_checksum_write_nothing(
    alice: httpx.Client, home_dir: Path
) -> None:
    target = home_dir / "kept.txt"
    ok_output(alice.put(url(target), content=b"first"))
    refused = alice.put(url(target), content=b"second", headers={"If-None-Match": "*"})
    assert "If-None-Match" in error_of(refused, 412)
    assert target.read_bytes() == b"first"
    fresh = home_dir / "fresh.txt"
    ok_output(alice.put(url(fresh), content=b"x", headers={"If-None-Match": "*"}))
    wrong = alice.put(
        url(home_dir / "checked.bin"),
        content=b"payload",
        headers={"X-Checksum-Sha256": hashlib.sha256(b"other").hexdigest()},
    )
    assert "nothing was written" in error_of(wrong, 400)
    assert not (home_dir / "checked.bin").exists() and leftovers(home_dir) == []
    right = alice.put(
        url(home_dir / "checked.bin"),
        content=b"payload",
        headers={"X-Checksum-Sha256": hashlib.sha256(b"payload").hexdigest()},
    )
    assert ok_output(right)["size"] == 7


def test_bad_paths(alice: httpx.Client, home_dir: Path) -> None:
    for bad in ("%00", "%0a", "%1b"):
        answer = alice.get(f"/file/ln3{home_dir}/x{bad}y")
        assert "control characters" in error_of(answer, 400)
    assert "control characters" in error_of(
        alice.put(f"/file/ln3{home_dir}/a%00", content=b""), 400
    )
    # ".." is resolved by the operating system, as the user: above / is still /
    hostname = Path("/etc/hostname").read_bytes()
    dotted = alice.get("/file/ln3/%2e%2e/%2e%2e/etc/hostname", params={"view": "read"})
    assert dotted.status_code == 200 and dotted.content == hostname
    missing = alice.get(url(home_dir / "nothing-here"))
    assert "No such file or directory" in error_of(missing, 404)
    assert error_of(alice.get(url(home_dir / "nothing"), params={"view": "read"}), 404)
    # a directory where a file is needed, and the reverse
    assert "is a directory" in error_of(alice.get(url(home_dir), params={"view": "read"}), 400)
    assert "is a directory" in error_of(alice.put(url(home_dir), content=b"x"), 400)
    ok_output(alice.put(url(home_dir / "plain"), content=b"x"))
    assert "is not a directory" in error_of(
        alice.put(url(home_dir / "plain" / "x"), content=b"x"), 400
    )
    assert "does not exist" in error_of(alice.put(url(home_dir / "no" / "x"), content=b"x"), 404)
    assert "unknown view" in error_of(alice.get(url(home_dir), params={"view": "nope"}), 400)


def test_fifos_and_devices_are_refused_never_hang(alice: httpx.Client, home_dir: Path) -> None:
    fifo = home_dir / "fifo"
    as_user("alice", "mkfifo", str(fifo))
    for view in ("read", "head", "checksum"):
        answer = alice.get(url(fifo), params={"view": view}, timeout=30)
        assert "not a regular file" in error_of(answer, 400)
    answer = alice.get("/file/ln3/dev/zero", params={"view": "read"}, timeout=30)
    assert "not a regular file" in error_of(answer, 400)


def test_permissions_are_the_machines(
    alice: httpx.Client, bob: httpx.Client, home_dir: Path, bob_dir: Path
) -> None:
    secret = home_dir / "secret"
    ok_output(alice.put(url(secret), content=b"alice only"))
    ok_output(alice.post(url(secret), data={"op": "chmod", "mode": "600"}))
    assert secret.stat().st_mode & 0o777 == 0o600
    denied = bob.get(url(secret), params={"view": "read"})
    assert "Permission denied" in error_of(denied, 403)
    assert "Permission denied" in error_of(bob.get(url(secret), params={"view": "checksum"}), 403)
    assert "Permission denied" in error_of(bob.put(url(home_dir / "x"), content=b"x"), 403)
    assert "Permission denied" in error_of(bob.delete(url(secret)), 403)
    assert secret.read_bytes() == b"alice only"
    assert "Permission denied" in error_of(
        alice.get("/file/ln3/etc/shadow", params={"view": "read"}), 403
    )


def test_a_planted_symlink_never_writes_into_another_users_home(
    alice: httpx.Client, home_dir: Path, bob_dir: Path
) -> None:
    bobs = bob_dir / "notes.txt"
    as_user("bob", "sh", "-c", f"echo bob > {bobs}; chmod 666 {bobs}")
    # a link to bob's (world-writable) file: the upload replaces alice's link, not his file
    as_user("alice", "ln", "-s", str(bobs), str(home_dir / "link"))
    ok_output(alice.put(url(home_dir / "link"), content=b"alice was here"))
    assert bobs.read_text() == "bob\n"
    assert not (home_dir / "link").is_symlink()
    assert (home_dir / "link").read_bytes() == b"alice was here"
    # a link to bob's directory: the temporary file would be created there, as alice
    as_user("alice", "ln", "-s", str(bob_dir), str(home_dir / "bobdir"))
    answer = alice.put(url(home_dir / "bobdir" / "planted"), content=b"x")
    assert "Permission denied" in error_of(answer, 403)
    assert os.listdir(bob_dir) == ["notes.txt"]


def test_operations(alice: httpx.Client, home_dir: Path) -> None:
    deep = home_dir / "a" / "b"
    assert "No such file" in error_of(alice.post(url(deep), data={"op": "mkdir"}), 404)
    ok_output(alice.post(url(deep), json={"op": "mkdir", "parents": True}))
    assert deep.is_dir() and deep.owner() == "alice"
    ok_output(alice.put(url(deep / "f"), content=b"data"))
    ok_output(alice.post(url(deep / "f"), data={"op": "copy", "destination": str(home_dir / "g")}))
    ok_output(
        alice.post(
            url(home_dir / "g"), data={"op": "move", "destination": "~/" + home_dir.name + "/h"}
        )
    )
    assert (home_dir / "h").read_bytes() == b"data" and not (home_dir / "g").exists()
    ok_output(alice.post(url(home_dir / "ln"), data={"op": "symlink", "target": "h"}))
    assert os.readlink(home_dir / "ln") == "h"
    ok_output(alice.post(url(home_dir / "h"), data={"op": "chmod", "mode": "0640"}))
    assert (home_dir / "h").stat().st_mode & 0o777 == 0o640
    assert "octal" in error_of(
        alice.post(url(home_dir / "h"), data={"op": "chmod", "mode": "rwx"}), 400
    )
    assert "op must be" in error_of(alice.post(url(home_dir / "h"), data={"op": "explode"}), 400)
    assert "recursive=true" in error_of(alice.delete(url(home_dir / "a")), 400)
    ok_output(alice.delete(url(home_dir / "a"), params={"recursive": "true"}))
    ok_output(alice.delete(url(home_dir / "h")))
    assert not (home_dir / "a").exists() and not (home_dir / "h").exists()
    assert error_of(alice.delete(url(home_dir / "h")), 404)


def test_multipart_upload_into_a_directory(alice: httpx.Client, home_dir: Path) -> None:
    content = b"\x00\x01binary\xff" * 100_000
    answer = alice.post(
        url(home_dir),
        files={"file": ("input.dat", content, "application/octet-stream")},
        data={"other": "ignored"},
    )
    assert ok_output(answer) == {"location": f"{home_dir}/input.dat", "size": len(content)}
    assert (home_dir / "input.dat").read_bytes() == content


def test_an_upload_past_the_machines_limit_is_413_and_leaves_nothing(
    server: Server, alice: httpx.Client, home_dir: Path
) -> None:
    limit = server.config().machines["tight"].effective_limits(server.config().limits)
    answer = alice.put(url(home_dir / "big", "tight"), content=b"x" * (limit.max_upload_bytes + 1))
    assert str(limit.max_upload_bytes) in error_of(answer, 413)

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(4):
            yield b"y" * (limit.max_upload_bytes // 2)

    answer = alice.put(url(home_dir / "big", "tight"), content=chunked())
    assert str(limit.max_upload_bytes) in error_of(answer, 413)
    wait_for(lambda: leftovers(home_dir) == [], what="the partial upload to be removed")
    assert not (home_dir / "big").exists()


@pytest.fixture
def small_disk(public_dir: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs alice may write into."""
    mount = public_dir / f"small-{secrets.token_hex(4)}"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", str(mount)], check=True
    )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
    mount.rmdir()


def test_a_full_disk_is_507_and_leaves_nothing(alice: httpx.Client, small_disk: Path) -> None:
    answer = alice.put(url(small_disk / "huge"), content=os.urandom(3 * MiB))
    assert "nothing was written" in error_of(answer, 507)
    wait_for(lambda: os.listdir(small_disk) == [], what="the partial file to be removed")


def raw_request(server: Server, head: str, body: bytes) -> socket.socket:
    address = urlsplit(server.url)
    sock = socket.create_connection((address.hostname, address.port))
    sock.sendall(head.encode() + body)
    return sock


def test_an_upload_cut_midway_leaves_nothing(
    server: Server, alice: httpx.Client, home_dir: Path
) -> None:
    token = alice.headers["Authorization"]
    target = home_dir / "cut.bin"
    head = (
        f"PUT /api/file/ln3{target} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n"
        f"Content-Length: {64 * MiB}\r\n\r\n"
    )
    sock = raw_request(server, head, b"z" * (4 * MiB))
    wait_for(lambda: leftovers(home_dir), what="the upload to begin")
    sock.close()
    wait_for(lambda: leftovers(home_dir) == [], what="the partial upload to be removed")
    assert not target.exists()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """The gateway's largest resident size while a transfer runs (sampled)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_kib(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 1024


def test_a_large_file_round_trip_in_constant_memory(
    server: Server, alice: httpx.Client, home_dir: Path
) -> None:
    size = 256 * MiB
    block = os.urandom(MiB)
    expected = hashlib.sha256()
    for index in range(size // MiB):
        expected.update(block[index:] + block[:index])

    def body() -> Iterator[bytes]:
        for index in range(size // MiB):
            yield block[index:] + block[:index]

    target = home_dir / "large.bin"
    with PeakMemory(server.process.pid) as upload_memory:
        answer = alice.put(
            url(target),
            content=body(),
            headers={"X-Checksum-Sha256": expected.hexdigest(), "Content-Length": str(size)},
            timeout=300,
        )
    assert ok_output(answer)["size"] == size
    assert upload_memory.growth_mib < 64, upload_memory.growth_mib
    checksum = ok_output(alice.get(url(target), params={"view": "checksum"}, timeout=120))
    assert checksum["sha256"] == expected.hexdigest()
    received = hashlib.sha256()
    with (
        PeakMemory(server.process.pid) as download_memory,
        alice.stream("GET", url(target), params={"view": "read"}, timeout=300) as download,
    ):
        assert download.headers["content-length"] == str(size)
        for chunk in download.iter_bytes():
            received.update(chunk)
    assert received.hexdigest() == expected.hexdigest()
    assert download_memory.growth_mib < 64, download_memory.growth_mib


def readers_of(path: Path) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-u", "alice", "-f", f"if={path}"], capture_output=True, text=True
    )
    return found.stdout.split()


def test_a_download_the_client_abandons_is_stopped(
    server: Server, alice: httpx.Client, home_dir: Path
) -> None:
    target = home_dir / "abandoned.bin"
    as_user("alice", "truncate", "-s", str(64 * MiB), str(target))
    token = alice.headers["Authorization"]
    head = (
        f"GET /api/file/ln3{target}?view=read HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n"
    )
    sock = raw_request(server, head, b"")
    sock.settimeout(30)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    # the gateway is back-pressured by this reader (it reads no more) ...
    if 'runner = "local"' in server.config_path.read_text():
        wait_for(lambda: readers_of(target), what="the reader to run")
    sock.close()
    # ... and once it goes away, whatever served it ends
    wait_for(lambda: not readers_of(target), what="the reader to be killed")
    assert ok_output(alice.get("/file/ln3/~", params={"limit": 1}))  # the gateway still serves


def test_the_routes_are_described(anonymous: httpx.Client) -> None:
    paths = anonymous.get("/openapi.json").json()["paths"]
    assert set(paths["/api/file/{name}/{path}"]) == {"get", "put", "post", "delete"}
    assert "get" in paths["/api/file"]
    output = paths["/api/job/{name}/{jobid}/output"]["get"]
    assert "Last-Event-ID" in output["description"]


@pytest.fixture(scope="module")
def short_deadlines(cluster: None, public_dir: Path) -> Iterator[Server]:
    """A gateway whose request bodies must arrive within 2 s."""
    config = """
[server]
body_timeout = 2
[auth]
backend = "pam"
failed_login_delay = 0.05
[monitor]
account = "hpcmon"
[machines.ln3]
runner = "local"
"""
    running = start_server(config, public_dir)
    yield running
    stop_server(running)


def test_a_long_upload_outlives_the_body_deadline_and_a_trickle_does_not(
    short_deadlines: Server, home_dir: Path
) -> None:
    client = short_deadlines.login("alice")
    paced = threading.Event()

    def steady() -> Iterator[bytes]:  # ~4 MiB/s for about 3 body deadlines
        for _ in range(24):
            paced.wait(0.25)
            yield b"s" * MiB

    answer = client.put(url(home_dir / "steady.bin"), content=steady())
    assert ok_output(answer)["size"] == 24 * MiB
    token = client.headers["Authorization"]
    head = (
        f"PUT /api/file/ln3{home_dir}/trickle HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n"
        "Content-Length: 1000000\r\n\r\n"
    )
    with closing(raw_request(short_deadlines, head, b"t")) as sock:

        def refused() -> bytes:
            with contextlib.suppress(OSError):
                sock.sendall(b"t")
            sock.settimeout(0.5)
            try:
                return sock.recv(65536)
            except TimeoutError:
                return b""

        assert b"server.body_timeout" in wait_for(refused, timeout=30, what="a 408")
    wait_for(lambda: leftovers(home_dir) == [], what="the partial upload to be removed")
