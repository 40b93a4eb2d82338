"""The dashboard without a browser: catalogs, language choice, forms, headers, CSRF."""

from __future__ import annotations

import contextlib
import pwd
import re
import uuid
from html.parser import HTMLParser
from importlib import resources

import httpx
import pytest

from hpcgate import contract
from hpcgate.errors import BadRequest
from hpcgate.jobspec import parse_submission
from hpcgate.web import i18n
from hpcgate.web.forms import FIELD_NAMES, TEMPLATES, field_of, submission_fields
from hpcgate.web.pages import NOTICES
from hpcgate.web.security import csrf_token
from hpcgate.web.templates import switch_url
from tests.conftest import PASSWORDS, Server

TEMPLATES_DIR = resources.files("hpcgate.web").joinpath("templates")
USED_KEY = re.compile(r"""\bt\(\s*["'](\w+)["']\s*[,)]""")


class InlineCode(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, handlers and styles.

    Parsed as a browser does, so a job name such as ``<img onerror=...>`` shown
    escaped as text is not mistaken for markup.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("<script> without src")
        self.found += [f"<{tag} {name}=>" for name in names if name.startswith("on")]
        if "style" in names:
            self.found.append(f"<{tag} style=>")


def inline_code(page: str) -> list[str]:
    parser = InlineCode()
    parser.feed(page)
    parser.close()
    return parser.found


def test_the_inline_code_check_reads_markup_not_text() -> None:
    assert inline_code("<td>&lt;img src=x onerror=alert(1)&gt;</td>") == []
    assert inline_code('<img src=x onerror="alert(1)">') == ["<img onerror=>"]
    assert inline_code("<script>alert(1)</script><p style='x'>") == [
        "<script> without src",
        "<p style=>",
    ]


def used_keys() -> set[str]:
    keys: set[str] = set()
    for template in TEMPLATES_DIR.iterdir():
        keys |= set(USED_KEY.findall(template.read_text("utf-8")))
    # keys built from names: t("field_" + name), t("template_" + name)
    keys |= {f"field_{name}" for name in FIELD_NAMES}
    keys |= {f"template_{name}" for name in TEMPLATES}
    keys |= {f"type_{kind}" for kind in ("file", "dir", "link", "other")}
    keys |= {f"notice_{notice}" for notice in NOTICES}
    return keys


@pytest.mark.parametrize("language", list(i18n.LANGUAGES))
def test_every_catalog_has_every_message_the_pages_use(language: str) -> None:
    assert used_keys() - set(i18n.catalog(language)) == set()
    assert set(i18n.catalog(language)) == set(i18n.catalog(i18n.DEFAULT))


@pytest.mark.parametrize(
    ("choice", "accept", "expected"),
    [
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        (None, "en-GB,en;q=0.9,zh;q=0.8", "en"),
        (None, "fr-FR, zh-Hans;q=0.5", "zh-CN"),
        (None, "de-DE", "en"),
        (None, None, "en"),
        ("en", "zh-CN", "en"),  # the switch wins over the browser
        ("xx", "zh", "zh-CN"),
    ],
)
def test_language_from_the_switch_else_accept_language(
    choice: str | None, accept: str | None, expected: str
) -> None:
    assert i18n.negotiate(choice, accept) == expected


def test_switch_url_keeps_the_rest_of_the_query() -> None:
    assert switch_url("/web/m/ln3/jobs", "sort=name&lang=en", "zh-CN") == (
        "/web/m/ln3/jobs?sort=name&lang=zh-CN"
    )
    assert switch_url("/web/", "", "en") == "/web/?lang=en"


@pytest.mark.parametrize(
    ("fields", "concerned"),
    [
        ({"jobscript": "echo no shebang\n"}, "jobscript"),
        ({"jobscript": "#!/bin/sh\n", "job_name": "a\tb"}, "job_name"),
        ({"jobscript": "#!/bin/sh\n", "time_limit": "0"}, "time_limit"),
        ({"jobscript": "#!/bin/sh\n", "scale_memGB": "lots"}, "scale_memGB"),
        ({"jobscript": "#!/bin/sh\n", "jobfile_args": "'unclosed"}, "jobfile_args"),
        ({"jobscript": "#!/bin/sh\n", "partition": "no way"}, "partition"),
        ({"jobscript": "#!/bin/sh\n", "jobfile": "/x.sh"}, "jobscript"),
        ({"jobfile": "/x.sh", "jobfilepath": "/y.sh"}, "jobfilepath"),
        ({}, "jobscript"),
    ],
)
def test_each_validation_message_lands_next_to_its_field(
    fields: dict[str, str], concerned: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_submission(submission_fields(fields), max_script_bytes=1 << 20)
    assert field_of(refused.value.message) == concerned


def test_the_form_builds_the_apis_submission() -> None:
    form = {"jobscript": "#!/bin/sh\r\necho\r\n", "job_name": "x", "time_limit": " ", "x": "y"}
    assert submission_fields(form) == {
        "jobscript": "#!/bin/sh\necho\n",
        "jobconf": {"job_name": "x"},
    }
    assert set(contract.JOBCONF) <= set(FIELD_NAMES)


def test_csrf_tokens_are_per_session() -> None:
    assert csrf_token("a") != csrf_token("b")
    assert csrf_token("a") == csrf_token("a")


# -- against a real gateway -------------------------------------------------------------


def logged_in(server: Server, user: str) -> tuple[httpx.Client, str]:
    """A browser-like client with the session cookie, and its page's CSRF token."""
    client = httpx.Client(base_url=server.url, timeout=60)
    answer = client.post("/api/auth", data={"username": user, "password": PASSWORDS[user]})
    assert answer.status_code == 200
    page = client.get("/web/m/ln3/command")
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert token is not None
    return client, token.group(1)


def test_pages_carry_a_strict_csp_and_no_inline_script(local_server: Server) -> None:
    client, _ = logged_in(local_server, "alice")
    with contextlib.closing(client):
        anonymous = httpx.get(f"{local_server.url}/web/login")
        for path, page in [
            ("/web/login", anonymous),
            *(
                (path, client.get(path))
                for path in (
                    "/web/",
                    "/web/m/ln3/jobs",
                    "/web/m/ln3/submit",
                    f"/web/m/ln3/files{pwd.getpwnam('alice').pw_dir}",
                )
            ),
        ]:
            assert page.status_code == 200, path
            csp = page.headers["content-security-policy"]
            assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert page.headers["x-frame-options"] == "DENY"
            assert inline_code(page.text) == [], path
            assert "https://" not in page.text, path  # nothing from elsewhere


def test_a_form_without_the_token_or_from_another_site_is_refused(
    local_server: Server,
) -> None:
    client, token = logged_in(local_server, "alice")
    with contextlib.closing(client):
        line = {"command": "touch ~/web-csrf-canary"}
        assert client.post("/web/m/ln3/command", data=line).status_code == 403
        assert (
            client.post("/web/m/ln3/command", data={**line, "csrf_token": "0" * 64}).status_code
            == 403
        )
        foreign = client.post(
            "/web/m/ln3/command",
            data={**line, "csrf_token": token},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        ran = client.post("/web/m/ln3/command", data={"command": "echo ok", "csrf_token": token})
        assert ran.status_code == 200 and ">ok\n</pre>" in ran.text
        gone = client.post(
            "/web/m/ln3/command",
            data={"command": "test -e ~/web-csrf-canary; echo $?", "csrf_token": token},
        )
        assert ">1\n</pre>" in gone.text  # the refused forms ran nothing


def test_static_files_are_packaged_cacheable_and_compressed(local_server: Server) -> None:
    with httpx.Client(base_url=local_server.url) as client:
        script = client.get(
            "/web/static/vendor/htmx-2.0.11/htmx.min.js", headers={"Accept-Encoding": "gzip"}
        )
        assert script.status_code == 200
        assert script.headers["content-encoding"] == "gzip"
        assert "max-age" in script.headers["cache-control"]
        assert client.get("/web/static/../templates/base.html").status_code == 404


def test_an_upload_without_the_token_or_from_another_site_writes_nothing(
    local_server: Server,
) -> None:
    client, token = logged_in(local_server, "alice")
    home = pwd.getpwnam("alice").pw_dir
    name = f"web-upload-canary-{uuid.uuid4().hex[:8]}"
    upload = f"/web/m/ln3/upload{home}"
    json_answer = {"Accept": "application/json"}
    file = {"file": (name, b"should not be written\n")}
    with contextlib.closing(client), contextlib.closing(local_server.login("alice")) as api:
        try:
            assert client.post(upload, files=file, headers=json_answer).status_code == 403
            assert client.post(f"{upload}?csrf_token={'0' * 64}", files=file).status_code == 403
            foreign = client.post(
                f"{upload}?csrf_token={token}",
                files=file,
                headers={"Origin": "https://evil.example", **json_answer},
            )
            assert foreign.status_code == 403
            assert "cross-site" in foreign.json()["error"]
            assert api.get(f"/file/ln3/~/{name}").status_code == 404
            done = client.post(f"{upload}?csrf_token={token}", files=file, headers=json_answer)
            assert done.status_code == 200
            assert done.json() == {"location": f"{home}/{name}", "name": name, "size": 22}
            assert api.get(f"/file/ln3/~/{name}", params={"view": "read"}).text == (
                "should not be written\n"
            )
        finally:
            api.delete(f"/file/ln3/~/{name}")


@pytest.mark.parametrize("dirname", ["", ".", "..", "a/b"])
def test_make_directory_refuses_a_name_that_is_not_one_name(
    local_server: Server, dirname: str
) -> None:
    client, token = logged_in(local_server, "alice")
    with contextlib.closing(client):
        home = pwd.getpwnam("alice").pw_dir
        refused = client.post(
            f"/web/m/ln3/mkdir{home}", data={"dirname": dirname, "csrf_token": token}
        )
        assert refused.status_code == 400
        assert "without a slash" in refused.text
