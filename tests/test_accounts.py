"""Unix accounts from the real system databases, and the short cache in front of them."""

from __future__ import annotations

import grp
import subprocess
import time
from collections.abc import Iterator

import pytest

from hpcgate.accounts import AccountCache, UnixAccount
from hpcgate.errors import Forbidden

pytestmark = pytest.mark.usefixtures("cluster")  # creates alice and bob


@pytest.fixture
def extra_group() -> Iterator[str]:
    name = "hpcgate-cache-test"
    subprocess.run(["groupdel", name], capture_output=True)
    subprocess.run(["groupadd", name], check=True)
    yield name
    subprocess.run(["groupdel", name], check=True)


def test_lookup_reads_ids_groups_home_and_shell() -> None:
    alice = UnixAccount.lookup("alice")
    assert alice.name == "alice" and alice.uid >= 1000 and alice.home == "/home/alice"
    assert alice.gid in alice.groups and grp.getgrnam("hpcusers").gr_gid in alice.groups
    with pytest.raises(Forbidden, match="no Unix account 'nobody-here'"):
        UnixAccount.lookup("nobody-here")


def test_the_cache_reuses_an_account_until_it_is_too_old(extra_group: str) -> None:
    cache = AccountCache(max_age=0.5)
    before = cache.lookup("alice")
    subprocess.run(["gpasswd", "--add", "alice", extra_group], check=True, capture_output=True)
    gid = grp.getgrnam(extra_group).gr_gid
    assert cache.lookup("alice") is before, "reused within max_age"
    assert gid in cache.lookup("alice", fresh=True).groups, "a login looks up afresh"
    subprocess.run(["gpasswd", "--delete", "alice", extra_group], check=True, capture_output=True)
    time.sleep(0.6)
    assert gid not in cache.lookup("alice").groups, "past max_age the change applies"


def test_a_zero_max_age_never_reuses() -> None:
    cache = AccountCache(max_age=0)
    assert cache.lookup("bob") is not cache.lookup("bob")
    with pytest.raises(Forbidden):
        cache.lookup("nobody-here")
