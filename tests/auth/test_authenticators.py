"""PAM with the real test accounts, and the argon2 users file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hpcgate.auth.pam import PamAuthenticator
from hpcgate.auth.users_file import UsersFileAuthenticator, hash_password


def test_pam_accepts_the_real_password_only(cluster: None) -> None:
    pam = PamAuthenticator()
    assert asyncio.run(pam.authenticate("alice", "wonderland")) == "alice"
    assert asyncio.run(pam.authenticate("alice", "builder")) is None
    assert asyncio.run(pam.authenticate("nobody-such", "x")) is None


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(
        f'[users.ali]\npassword_hash = "{hash_password("s3cret")}"\nunix_account = "alice"\n'
    )
    return path


def test_users_file_maps_to_the_unix_account(users_file: Path) -> None:
    users = UsersFileAuthenticator(users_file)
    assert asyncio.run(users.authenticate("ali", "s3cret")) == "alice"
    assert asyncio.run(users.authenticate("ali", "wrong")) is None
    assert asyncio.run(users.authenticate("unknown", "s3cret")) is None


def test_users_file_is_reread_when_it_changes(users_file: Path) -> None:
    users = UsersFileAuthenticator(users_file)
    users_file.write_text(f'[users.bob]\npassword_hash = "{hash_password("pw")}"\n')
    assert asyncio.run(users.authenticate("bob", "pw")) == "bob"
    assert asyncio.run(users.authenticate("ali", "s3cret")) is None


def test_a_users_file_entry_without_a_hash_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("[users.x]\nunix_account = 'x'\n")
    with pytest.raises(ValueError, match=r"users\.x needs a password_hash"):
        UsersFileAuthenticator(path)


def test_the_account_a_name_maps_to_is_known_without_the_password(users_file: Path) -> None:
    users = UsersFileAuthenticator(users_file)
    assert users.unix_account("ali") == "alice"
    assert users.unix_account("unknown") is None
    assert PamAuthenticator().unix_account("root") == "root"  # PAM: the name itself
