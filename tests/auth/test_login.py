"""Login rules that hold for every authenticator: root never, system accounts never, and
the throttle that limits guessing without letting anyone lock an owner out."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from hpcgate.auth.login import LoginService, LoginThrottle
from hpcgate.auth.pam import PamAuthenticator
from hpcgate.auth.users_file import UsersFileAuthenticator, hash_password
from hpcgate.config import AuthConfig
from hpcgate.errors import BadRequest, NotLoggedIn, TooManyRequests
from hpcgate.stores.memory import MemorySessionStore


@pytest.fixture
def service(tmp_path: Path, cluster: None) -> LoginService:
    path = tmp_path / "users.toml"
    entries = {"admin": "root", "daemon": "daemon", "ali": "alice"}
    path.write_text(
        "".join(
            f'[users.{name}]\npassword_hash = "{hash_password("pw")}"\nunix_account = "{unix}"\n'
            for name, unix in entries.items()
        )
    )
    config = AuthConfig(backend="users_file", users_file=path, failed_login_delay=0)
    return LoginService(UsersFileAuthenticator(path), MemorySessionStore(), config)


class RecordingPam(PamAuthenticator):
    """Real PAM, remembering whom it was asked about and on which thread."""

    def __init__(self, threads: int = 4) -> None:
        super().__init__(threads=threads)
        self.asked: list[tuple[str, str]] = []

    def _check(self, username: str, password: str) -> bool:
        self.asked.append((username, threading.current_thread().name))
        return super()._check(username, password)


def pam_service(pam: PamAuthenticator, **settings: object) -> LoginService:
    config = AuthConfig(failed_login_delay=0, **settings)
    return LoginService(pam, MemorySessionStore(), config)


@pytest.mark.parametrize("name", ["admin", "daemon"])
def test_root_and_system_accounts_get_the_answer_of_a_wrong_password(
    service: LoginService, name: str
) -> None:
    for password in ("pw", "wrong"):
        with pytest.raises(NotLoggedIn, match=r"^wrong username or password$"):
            asyncio.run(service.login(name, password, "127.0.0.1"))


def test_pam_is_never_asked_about_an_account_that_may_not_log_in(cluster: None) -> None:
    pam = RecordingPam()
    service = pam_service(pam)
    for name in ("root", "daemon", "nobody", "hpcmon", "nosuchuser42"):
        with pytest.raises(NotLoggedIn, match=r"^wrong username or password$"):
            asyncio.run(service.login(name, "x", "127.0.0.1"))
    assert pam.asked == []
    with pytest.raises(NotLoggedIn):
        asyncio.run(service.login("alice", "x", "127.0.0.1"))
    assert asyncio.run(service.login("alice", "wonderland", "127.0.0.1"))[2].name == "alice"
    assert [name for name, _ in pam.asked] == ["alice", "alice"]


def test_pam_runs_on_its_own_pool(cluster: None) -> None:
    pam = RecordingPam(threads=2)
    service = pam_service(pam)

    async def many() -> None:
        attempts = [service.login("alice", "x", f"10.0.0.{n}") for n in range(6)]
        await asyncio.gather(*attempts, return_exceptions=True)

    asyncio.run(many())
    threads = {thread for _, thread in pam.asked}
    assert len(pam.asked) == 6 and 1 <= len(threads) <= 2
    assert all(thread.startswith("hpcgate-pam") for thread in threads)


def test_a_good_login_maps_the_token_to_the_account(service: LoginService) -> None:
    token, session, account = asyncio.run(service.login("ali", "pw", "127.0.0.1"))
    assert account.name == "alice" and session.username == "alice"
    assert asyncio.run(service.account_for(token))[0].uid == account.uid
    assert asyncio.run(service.logout(token))
    with pytest.raises(NotLoggedIn):
        asyncio.run(service.account_for(token))


@pytest.mark.parametrize("name", ["ali", "admin", "nosuchuser"])
def test_failures_are_slowed_down(service: LoginService, name: str) -> None:
    service.config = service.config.model_copy(update={"failed_login_delay": 0.3})
    started = time.monotonic()
    with pytest.raises(NotLoggedIn):
        asyncio.run(service.login(name, "wrong", "127.0.0.1"))
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize(
    ("username", "password"), [("", "x"), ("ali", ""), ("a b", "x"), ("-x", "y")]
)
def test_malformed_credentials(service: LoginService, username: str, password: str) -> None:
    with pytest.raises(BadRequest):
        asyncio.run(service.login(username, password, "127.0.0.1"))


def test_concurrent_attempts_are_counted_before_the_check(service: LoginService) -> None:
    """Attempts reserve their place before the password is checked: sent at once, no more
    than the limit are checked, and the right password among them is refused too."""
    service.config = service.config.model_copy(update={"max_failures_per_user": 3})
    service.throttle.config = service.config

    async def burst() -> list[object]:
        attempts = [service.login("ali", "wrong", "10.0.0.1") for _ in range(10)]
        attempts.append(service.login("ali", "pw", "10.0.0.1"))
        return await asyncio.gather(*attempts, return_exceptions=True)

    outcomes = asyncio.run(burst())
    assert sum(isinstance(outcome, NotLoggedIn) for outcome in outcomes) == 3
    assert sum(isinstance(outcome, TooManyRequests) for outcome in outcomes) == 8


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, **settings: float) -> LoginThrottle:
    limits = {
        "max_failures_per_user": 3,
        "max_failures_per_address": 10,
        "max_failures_per_user_total": 5,
        "lockout_seconds": 60,
        "known_address_seconds": 3600,
    }
    return LoginThrottle(AuthConfig(**(limits | settings)), clock)


def fail(limits: LoginThrottle, user: str, address: str, times: int = 1) -> None:
    for _ in range(times):
        limits.reserve(user, address)  # counted; a failure changes nothing more


def test_a_lockout_of_one_name_and_address_spares_other_addresses() -> None:
    clock = Clock()
    limits = throttle(clock)
    fail(limits, "bob", "10.0.0.66", 3)
    with pytest.raises(TooManyRequests, match="for bob; try again in 60 s"):
        limits.reserve("bob", "10.0.0.66")
    limits.succeeded(limits.reserve("bob", "10.0.0.1"))  # the owner, elsewhere


def test_each_lockout_of_the_same_name_and_address_lasts_twice_as_long() -> None:
    clock = Clock()
    limits = throttle(clock)
    for expected in (60, 120, 240):
        fail(limits, "bob", "10.0.0.66", 3)
        with pytest.raises(TooManyRequests, match=f"try again in {expected} s"):
            limits.reserve("bob", "10.0.0.66")
        clock.now += expected + 1
    clock.now += 10 * 240  # quiet long enough: forgotten, back to the first lockout
    fail(limits, "bob", "10.0.0.66", 3)
    with pytest.raises(TooManyRequests, match="try again in 60 s"):
        limits.reserve("bob", "10.0.0.66")


def test_an_address_is_limited_whatever_the_names() -> None:
    clock = Clock()
    limits = throttle(clock, max_failures_per_user_total=100)
    for n in range(10):
        fail(limits, f"user{n}", "10.0.0.66")
    with pytest.raises(TooManyRequests, match=r"from 10\.0\.0\.66"):
        limits.reserve("alice", "10.0.0.66")
    clock.now += 61
    limits.reserve("alice", "10.0.0.66")


def test_the_limit_across_addresses_spares_known_ones_and_lifts_on_a_login() -> None:
    clock = Clock()
    limits = throttle(clock)
    limits.succeeded(limits.reserve("bob", "10.0.0.1"))  # bob's own address
    for n in range(5):
        fail(limits, "bob", f"10.0.1.{n}")  # one guess from each of many addresses
    with pytest.raises(TooManyRequests, match="from addresses it has not logged in from"):
        limits.reserve("bob", "10.0.2.1")
    home = limits.reserve("bob", "10.0.0.1")  # known: spared
    limits.succeeded(home)
    limits.succeeded(limits.reserve("bob", "10.0.2.1"))  # the login lifted the limit
    clock.now += 3601  # known addresses are forgotten in time
    for n in range(5):
        fail(limits, "bob", f"10.0.3.{n}")
    with pytest.raises(TooManyRequests):
        limits.reserve("bob", "10.0.0.1")


def test_a_success_is_not_a_failure_of_its_address() -> None:
    clock = Clock()
    limits = throttle(clock, max_failures_per_address=2)
    for _ in range(5):
        limits.succeeded(limits.reserve("alice", "10.0.0.1"))
    fail(limits, "bob", "10.0.0.1")
    limits.reserve("carol", "10.0.0.1")


def test_the_throttle_forgets_keys_it_no_longer_needs() -> None:
    clock = Clock()
    limits = throttle(clock)
    limits.MAX_KEYS = 6
    for name in ("a", "b", "c"):
        fail(limits, name, "10.0.0.1")
    clock.now += 61
    fail(limits, "d", "10.0.0.2")  # past MAX_KEYS: the expired keys are dropped
    assert list(limits._pairs) == [("d", "10.0.0.2")]
    assert list(limits._addresses) == ["10.0.0.2"] and list(limits._users) == ["d"]
