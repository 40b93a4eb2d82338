"""Files and job output through the Python client (sync and async) and the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcgate.client import AsyncClient, BadRequest, Client, FileEntry, Forbidden, NotFound
from tests.client.test_cli import Cli
from tests.conftest import PASSWORDS, Server


@pytest.fixture
def remote_dir() -> Iterator[str]:
    path = f"/home/alice/client-files-{secrets.token_hex(4)}"
    subprocess.run(["runuser", "-u", "alice", "--", "mkdir", path], check=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def alice(server: Server) -> Iterator[Client]:
    with Client(server.url) as client:
        client.login("alice", PASSWORDS["alice"])
        yield client


def test_upload_list_download_read_mkdir_remove(
    alice: Client, remote_dir: str, tmp_path: Path
) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    seen: list[tuple[int, int | None]] = []
    size = alice.upload(
        "ln3", source, f"{remote_dir}/in.bin", progress=lambda d, t: seen.append((d, t))
    )
    assert size == source.stat().st_size and seen[-1] == (size, size)
    assert Path(f"{remote_dir}/in.bin").read_bytes() == source.read_bytes()
    alice.mkdir("ln3", f"{remote_dir}/a/b", parents=True)
    entries = alice.list("ln3", remote_dir)
    assert [entry.name for entry in entries] == ["a", "in.bin"]
    assert isinstance(entries[1], FileEntry) and entries[1].size == size
    copy = tmp_path / "out.bin"
    assert alice.download("ln3", f"{remote_dir}/in.bin", copy) == size
    assert copy.read_bytes() == source.read_bytes()
    assert b"".join(alice.read("ln3", f"{remote_dir}/in.bin")) == source.read_bytes()
    with pytest.raises(BadRequest, match="is a directory"):
        alice.download("ln3", remote_dir, tmp_path / "dir")
    assert not (tmp_path / "dir").exists() and not (tmp_path / ".dir.part").exists()
    with pytest.raises(Forbidden, match="Permission denied"):
        alice.download("ln3", "/etc/shadow", tmp_path / "shadow")
    with pytest.raises(BadRequest):  # refused before anything is written
        alice.upload("ln3", source, f"{remote_dir}/in.bin", overwrite=False)
    alice.remove("ln3", f"{remote_dir}/a", recursive=True)
    alice.remove("ln3", f"{remote_dir}/in.bin")
    assert alice.list("ln3", remote_dir) == []
    with pytest.raises(NotFound):
        alice.remove("ln3", f"{remote_dir}/in.bin")


def test_the_async_client(server: Server, remote_dir: str, tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("async\n")

    async def main() -> None:
        async with AsyncClient(server.url) as client:
            await client.login("alice", PASSWORDS["alice"])
            assert await client.upload("ln3", source, f"{remote_dir}/a.txt") == 6
            assert [e.name for e in await client.list("ln3", remote_dir)] == ["a.txt"]
            assert await client.download("ln3", f"{remote_dir}/a.txt", tmp_path / "b.txt") == 6
            assert (
                b"".join([b async for b in client.read("ln3", f"{remote_dir}/a.txt")]) == b"async\n"
            )
            await client.mkdir("ln3", f"{remote_dir}/d")
            await client.remove("ln3", f"{remote_dir}/d", recursive=True)
            jobid = await client.submit(
                "ln3", script="#!/bin/bash\necho one\necho two\n", path=f"{remote_dir}/j.sh"
            )
            text = "".join([piece async for piece in client.follow_output("ln3", jobid)])
            assert text == "one\ntwo\n"
            done = await client.job_output("ln3", jobid, offset=4)
            assert (done.data, done.eof, done.next_offset) == ("two\n", True, 8)

    asyncio.run(main())
    assert (tmp_path / "b.txt").read_text() == "async\n"


def test_following_a_jobs_output(alice: Client, remote_dir: str) -> None:
    script = "#!/bin/bash\nfor i in 1 2 3; do echo step $i; sleep 0.3; done\necho bad >&2\n"
    jobid = alice.submit("ln3", script=script, path=f"{remote_dir}/job.sh", name="follow")
    assert "".join(alice.follow_output("ln3", jobid)) == "step 1\nstep 2\nstep 3\nbad\n"


def test_the_commands(server: Server, remote_dir: str, tmp_path: Path) -> None:
    cli = Cli(server, tmp_path / "config")
    cli.login("alice")
    local = tmp_path / "data.txt"
    local.write_text("hello from the cli\n")
    put = cli("put", "ln3", str(local), f"{remote_dir}/", "--json")
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout) == {"location": f"{remote_dir}/data.txt", "size": 19}
    listed = cli("ls", "ln3", remote_dir, "--json")
    assert [entry["name"] for entry in json.loads(listed.stdout)] == ["data.txt"]
    assert "data.txt" in cli("ls", "ln3", remote_dir).stdout
    assert cli("cat", "ln3", f"{remote_dir}/data.txt").stdout == "hello from the cli\n"
    got = cli("get", "ln3", f"{remote_dir}/data.txt", str(tmp_path / "copy.txt"))
    assert got.returncode == 0 and (tmp_path / "copy.txt").read_text() == "hello from the cli\n"
    assert cli("mkdir", "ln3", f"{remote_dir}/x/y", "-p").returncode == 0
    assert Path(f"{remote_dir}/x/y").is_dir()
    refused = cli("put", "ln3", str(local), f"{remote_dir}/data.txt", "--no-clobber")
    assert refused.returncode == 1 and "If-None-Match" in refused.stderr
    assert cli("rm", "ln3", f"{remote_dir}/x", "-r").returncode == 0
    missing = cli("cat", "ln3", f"{remote_dir}/nothing")
    assert missing.returncode == 1 and "No such file" in missing.stderr
    submitted = cli(
        "submit", "ln3", str(_script(tmp_path)), "--path", f"{remote_dir}/job.sh", "--json"
    )
    jobid = str(json.loads(submitted.stdout)["jobid"])
    followed = cli("logs", "ln3", jobid, "-f")
    assert followed.returncode == 0 and followed.stdout == "out 1\nout 2\nto stderr\n"
    assert cli("logs", "ln3", jobid).stdout == "out 1\nout 2\nto stderr\n"
    digest = hashlib.sha256(b"hello from the cli\n").hexdigest()
    assert Path(f"{remote_dir}/data.txt").read_bytes() == b"hello from the cli\n", digest


def _script(tmp_path: Path) -> Path:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho out 1\nsleep 0.3\necho out 2\necho to stderr >&2\n")
    return script
