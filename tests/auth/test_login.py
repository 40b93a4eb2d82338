"""Login rules that hold for every authenticator: root never, system accounts never."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hpcgate.auth.login import FailureThrottle, LoginService
from hpcgate.auth.sessions import MemorySessionStore
from hpcgate.auth.users_file import UsersFileAuthenticator, hash_password
from hpcgate.config import AuthConfig
from hpcgate.errors import BadRequest, Forbidden, NotLoggedIn


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


def test_root_can_never_log_in(service: LoginService) -> None:
    with pytest.raises(Forbidden, match="root can never use the gateway"):
        asyncio.run(service.login("admin", "pw", "127.0.0.1"))


def test_system_accounts_cannot_log_in(service: LoginService) -> None:
    with pytest.raises(Forbidden, match="system account"):
        asyncio.run(service.login("daemon", "pw", "127.0.0.1"))


def test_a_good_login_maps_the_token_to_the_account(service: LoginService) -> None:
    token, session, account = asyncio.run(service.login("ali", "pw", "127.0.0.1"))
    assert account.name == "alice" and session.username == "alice"
    assert asyncio.run(service.account_for(token))[0].uid == account.uid
    assert asyncio.run(service.logout(token))
    with pytest.raises(NotLoggedIn):
        asyncio.run(service.account_for(token))


def test_failures_are_slowed_down(service: LoginService) -> None:
    service.config = service.config.model_copy(update={"failed_login_delay": 0.3})
    started = time.monotonic()
    with pytest.raises(NotLoggedIn):
        asyncio.run(service.login("ali", "wrong", "127.0.0.1"))
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize(
    ("username", "password"), [("", "x"), ("ali", ""), ("a b", "x"), ("-x", "y")]
)
def test_malformed_credentials(service: LoginService, username: str, password: str) -> None:
    with pytest.raises(BadRequest):
        asyncio.run(service.login(username, password, "127.0.0.1"))


def test_the_failure_throttle_forgets_keys_it_no_longer_needs() -> None:
    throttle = FailureThrottle(window=0.05)
    throttle.MAX_KEYS = 3
    for name in ("a", "b", "c"):
        throttle.fail(f"user:{name}")
    time.sleep(0.1)
    throttle.fail("user:d")  # past MAX_KEYS: the expired keys are dropped
    assert list(throttle._failures) == ["user:d"]
    assert throttle.retry_after("user:d", limit=1) > 0
