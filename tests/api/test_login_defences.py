"""Logins under attack, against real gateways with real PAM (issue 12).

Each test starts its own gateway: tests that lock accounts must not lock out the shared
ones. Other loopback addresses (127.0.0.2, ...) stand for other clients.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcgate.auth.users_file import hash_password
from tests.conftest import Server, error_of, ok_output, start_server, stop_server, wait_for

WRONG = "not-the-password"


def auth_config(**settings: object) -> str:
    lines = "".join(f"{key} = {value!r}\n" for key, value in settings.items())
    return f"[auth]\n{lines}[machines.ln3]\n".replace("'", '"')


def from_address(server: Server, address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (a loopback address)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=f"{server.url}/api", timeout=90, transport=transport)


def login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    return client.post("/auth", data={"username": username, "password": password})


async def login_all(
    server: Server, attempts: list[tuple[str, str, str]]
) -> list[tuple[float, httpx.Response]]:
    """Send every (address, username, password) at once; each answer with when it came."""
    clients = {
        address: httpx.AsyncClient(
            base_url=f"{server.url}/api",
            timeout=120,
            transport=httpx.AsyncHTTPTransport(local_address=address),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )
        for address, _, _ in attempts
    }

    async def one(address: str, username: str, password: str) -> tuple[float, httpx.Response]:
        answer = await clients[address].post(
            "/auth", data={"username": username, "password": password}
        )
        return time.monotonic(), answer

    try:
        return list(await asyncio.gather(*(one(*attempt) for attempt in attempts)))
    finally:
        for client in clients.values():
            await client.aclose()


@pytest.fixture
def gateway_with(cluster: None, public_dir: Path) -> Iterator[list[Server]]:
    """Gateways started by the test (``started.append(start_server(...))``), all stopped."""
    started: list[Server] = []
    yield started
    for server in started:
        stop_server(server)


def test_a_system_account_gets_the_answer_of_a_wrong_password(
    gateway_with: list[Server], public_dir: Path, tmp_path: Path
) -> None:
    """The right password of root or a system account is no different from a wrong one."""
    users = public_dir / f"users-{tmp_path.name}.toml"
    entries = {"admin": "root", "svc": "daemon", "mon": "hpcmon", "ali": "alice"}
    users.write_text(
        "".join(
            f'[users.{name}]\npassword_hash = "{hash_password("pw")}"\nunix_account = "{unix}"\n'
            for name, unix in entries.items()
        )
    )
    server = start_server(
        auth_config(backend="users_file", users_file=str(users), failed_login_delay=0.05),
        public_dir,
    )
    gateway_with.append(server)
    with server.client() as client:
        for name in ("admin", "svc", "mon"):
            right, wrong = login(client, name, "pw"), login(client, name, WRONG)
            assert error_of(right, 401) == error_of(wrong, 401) == "wrong username or password"
        ok_output(login(client, "ali", "pw"))


def test_concurrent_guesses_cannot_pass_the_limit(
    gateway_with: list[Server], public_dir: Path
) -> None:
    """40 wrong passwords and the right one at once: only the allowed few reach PAM."""
    limit = 5
    server = start_server(
        auth_config(failed_login_delay=0.05, max_failures_per_user=limit), public_dir
    )
    gateway_with.append(server)
    attempts = [("127.0.0.2", "alice", WRONG)] * 40 + [("127.0.0.2", "alice", "wonderland")]
    answers = [answer for _, answer in asyncio.run(login_all(server, attempts))]
    tried = [answer for answer in answers if answer.status_code != 429]
    assert len(tried) <= limit, [answer.status_code for answer in answers]
    assert all(answer.status_code in (401, 429) for answer in answers[:-1])


def test_guesses_from_one_address_do_not_lock_the_owner_out_elsewhere(
    gateway_with: list[Server], public_dir: Path
) -> None:
    server = start_server(
        auth_config(failed_login_delay=0, max_failures_per_user=3, lockout_seconds=60),
        public_dir,
    )
    gateway_with.append(server)
    with from_address(server, "127.0.0.2") as attacker, from_address(server, "127.0.0.3") as bob:
        for _ in range(6):
            login(attacker, "bob", WRONG)
        assert "too many failed logins" in error_of(login(attacker, "bob", "builder"), 429)
        assert ok_output(login(bob, "bob", "builder"))["username"] == "bob"


def test_guesses_from_many_addresses_spare_the_owners_known_address(
    gateway_with: list[Server], public_dir: Path
) -> None:
    """The per-user limit across addresses holds, except where the owner logged in before,
    and lifts once the owner has logged in."""
    server = start_server(
        auth_config(
            failed_login_delay=0,
            max_failures_per_user=2,
            max_failures_per_user_total=4,
            lockout_seconds=60,
        ),
        public_dir,
    )
    gateway_with.append(server)
    with from_address(server, "127.0.0.5") as home:
        ok_output(login(home, "bob", "builder"))
        for address in ("127.0.0.2", "127.0.0.3"):
            with from_address(server, address) as attacker:
                for _ in range(2):
                    error_of(login(attacker, "bob", WRONG), 401)
        with from_address(server, "127.0.0.4") as travelling:
            assert "too many failed logins" in error_of(login(travelling, "bob", "builder"), 429)
            ok_output(login(home, "bob", "builder"))  # a known-good address is spared
            ok_output(login(travelling, "bob", "builder"))  # and the login lifted the limit


def logins(server: Server, outcome: str) -> float:
    """The gateway's count of logins answered with ``outcome`` (its /metrics)."""
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            if sample.name == "hpcgate_logins_total" and sample.labels["outcome"] == outcome:
                return sample.value
    return 0.0


async def raw_failed_logins(server: Server, address: str, count: int) -> list[int]:
    """``count`` failed logins from ``address`` at once, on plain sockets: httpx's async
    client opens connections one after another at a few tens a second on a busy 2-core
    machine, which would spread the burst over many seconds. The answers' statuses."""
    url = httpx.URL(server.url)

    async def one(n: int) -> int:
        reader, writer = await asyncio.open_connection(url.host, url.port, local_addr=(address, 0))
        body = f"username=user{n}&password={WRONG}".encode()
        writer.write(
            b"POST /api/auth HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        status = int((await reader.readline()).split()[1])
        await reader.read()
        writer.close()
        return status

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def test_a_burst_of_failures_does_not_delay_another_users_login(
    gateway_with: list[Server], public_dir: Path
) -> None:
    """200 failed logins at once from one address; alice, from another, is answered while
    every one of those that reached PAM is still waiting out its delay: they wait without
    holding a thread, and the per-address limit refused the rest before PAM."""
    limit, delay = 20, 15.0
    server = start_server(
        auth_config(failed_login_delay=delay, max_failures_per_address=limit), public_dir
    )
    gateway_with.append(server)

    async def scenario() -> tuple[list[int], float, httpx.Response]:
        burst = asyncio.ensure_future(raw_failed_logins(server, "127.0.0.2", 200))
        # the burst is in: all past the per-address limit were refused (before PAM), so
        # the others reached PAM and now wait out their delay
        await asyncio.to_thread(
            wait_for,
            lambda: logins(server, "locked_out") >= 200 - limit,
            timeout=delay / 2,
            what="the burst past the per-address limit to be refused",
        )
        [(_, alice)] = await login_all(server, [("127.0.0.3", "alice", "wonderland")])
        failures_when_alice_got_in = logins(server, "failure")
        return await burst, failures_when_alice_got_in, alice

    burst, failures_before_alice, alice = asyncio.run(scenario())
    ok_output(alice)
    refused = [status for status in burst if status == 401]
    assert 0 < len(refused) <= limit, "the per-address limit is counted before PAM"
    # alice's login was not queued behind the failures: none of them had been answered
    assert failures_before_alice == 0


def test_a_login_form_on_another_site_is_refused(
    gateway_with: list[Server], public_dir: Path
) -> None:
    server = start_server(auth_config(failed_login_delay=0.05), public_dir)
    gateway_with.append(server)
    credentials = {"username": "alice", "password": "wonderland"}
    with server.client() as client:
        for header in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/"}):
            answer = client.post("/auth", data=credentials, headers=header)
            assert "cross-site" in error_of(answer, 403)
            assert "set-cookie" not in answer.headers
        ok_output(client.post("/auth", data=credentials, headers={"Origin": server.url}))
        ok_output(client.post("/auth", data=credentials))  # no header: not a browser


def test_every_refused_login_takes_the_same_time(
    gateway_with: list[Server], public_dir: Path
) -> None:
    """Unknown names, root, system accounts and wrong passwords: medians alike."""
    delay = 1.0  # above a password check's time even on a loaded machine (0.7 s seen)
    server = start_server(
        auth_config(
            failed_login_delay=delay, max_failures_per_user=100, max_failures_per_address=1000
        ),
        public_dir,
    )
    gateway_with.append(server)
    kinds = {"unknown": "nosuchuser42", "root": "root", "system": "daemon", "wrong": "alice"}
    durations: dict[str, list[float]] = {kind: [] for kind in kinds}
    order = [kind for kind in kinds for _ in range(9)]
    random.shuffle(order)
    with server.client() as client:
        for kind in order:
            started = time.monotonic()
            error_of(login(client, kinds[kind], WRONG), 401)
            durations[kind].append(time.monotonic() - started)
    medians = {kind: statistics.median(values) for kind, values in durations.items()}
    assert max(medians.values()) - min(medians.values()) < delay / 2, medians
