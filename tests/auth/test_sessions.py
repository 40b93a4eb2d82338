"""Sessions: random tokens, kept only as hashes, that expire."""

from __future__ import annotations

import time

from hpcgate.auth.sessions import SessionStore


def test_tokens_are_random_and_never_stored_in_clear() -> None:
    store = SessionStore()
    first, _ = store.create("alice", 60)
    second, _ = store.create("alice", 60)
    assert first != second and len(first) >= 40
    assert first not in repr(store._sessions) and second not in repr(store._sessions)
    assert store.get(first) is not None and store.get(first).username == "alice"  # type: ignore[union-attr]


def test_sessions_expire() -> None:
    store = SessionStore()
    token, session = store.create("alice", 60)
    assert 0 < session.remaining <= 60
    store._sessions = {
        key: type(s)(s.username, s.created, time.time() - 1) for key, s in store._sessions.items()
    }
    assert store.get(token) is None


def test_delete() -> None:
    store = SessionStore()
    token, _ = store.create("bob", 60)
    assert store.delete(token) and not store.delete(token)
    assert store.get(token) is None and store.get("unknown") is None
