"""POST/GET/DELETE /api/auth with real PAM accounts."""

from __future__ import annotations

import httpx

from tests.conftest import Server, error_of, ok_output


def test_login_gives_a_token_and_a_strict_httponly_cookie(server: Server) -> None:
    with server.client() as client:
        answer = client.post("/auth", data={"username": "alice", "password": "wonderland"})
        output = ok_output(answer)
        assert output["auth"] is True and output["username"] == "alice"
        assert len(output["token"]) >= 40 and output["session_lifetime"] > 0
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        # the cookie alone is a session
        assert ok_output(client.get("/auth"))["username"] == "alice"
        assert (
            ok_output(client.post("/command/ln3", data={"command": "id -un"}))["output"]
            == "alice\n"
        )


def test_login_with_a_json_body(server: Server) -> None:
    with server.client() as client:
        answer = client.post("/auth/", json={"username": "bob", "password": "builder"})
        assert ok_output(answer)["username"] == "bob"


def test_bearer_token_without_cookie(server: Server) -> None:
    with server.client() as client:
        token = ok_output(client.post("/auth", data={"username": "bob", "password": "builder"}))[
            "token"
        ]
    with server.client(headers={"Authorization": f"Bearer {token}"}) as client:
        assert ok_output(client.get("/auth"))["username"] == "bob"


def test_wrong_password_is_401_and_logged(server: Server, anonymous: httpx.Client) -> None:
    answer = anonymous.post("/auth", data={"username": "alice", "password": "nope"})
    assert "wrong username or password" in error_of(answer, 401)
    assert "failed login for 'alice'" in server.log()
    error_of(anonymous.post("/auth", data={"username": "nosuchuser", "password": "x"}), 401)


def test_missing_credentials_are_400(anonymous: httpx.Client) -> None:
    assert "password" in error_of(anonymous.post("/auth", data={"username": "alice"}), 400)


def test_not_logged_in_says_so(anonymous: httpx.Client) -> None:
    assert ok_output(anonymous.get("/auth")) == {"auth": False, "username": None}


def test_logout_ends_the_session(server: Server) -> None:
    client = server.login("alice")
    assert ok_output(client.get("/job/ln3")) is not None
    assert ok_output(client.delete("/auth")) == {"auth": False, "username": None}
    error_of(client.get("/job/ln3"), 401)
    assert ok_output(client.get("/auth"))["auth"] is False
