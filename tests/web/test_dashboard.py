"""The dashboard in a real browser against the real gateway and cluster (issue 17)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import pwd
import random
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe

from tests.conftest import PASSWORDS, Server, wait_for
from tests.web.conftest import Shots, playwright_api

pytestmark = pytest.mark.slow

Browser = playwright_api.Browser
Page = playwright_api.Page
expect = playwright_api.expect

XSS_NAME = "<img src=x onerror=alert(1)>"
SNAPSHOTS_BEFORE_THE_SAFETY_POLL = 30_000  # ms: 6 monitor intervals, half the safety poll
LIVE = 90_000  # ms: a few monitor intervals, and a job's wait, start and end on a busy cluster


@pytest.fixture
def pages(browser: Browser, local_server: Server) -> Iterator[list[Page]]:
    """Pages opened by a test; each in its own context, all closed at the end."""
    opened: list[Page] = []
    yield opened
    for page in opened:
        page.context.close()


def open_page(
    pages: list[Page], browser: Browser, server: Server, user: str | None, **options: Any
) -> Page:
    """A new browser context and page, logged in as ``user`` through the login form."""
    context = browser.new_context(
        base_url=server.url, viewport={"width": 1100, "height": 760}, **options
    )
    page = context.new_page()
    page.dialogs = []  # type: ignore[attr-defined]
    page.on("dialog", lambda dialog: record_dialog(page, dialog))
    pages.append(page)
    if user is not None:
        page.goto("/web/login")
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password").fill(PASSWORDS[user])
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
    return page


def record_dialog(page: Page, dialog: playwright_api.Dialog) -> None:
    page.dialogs.append(dialog.message)  # type: ignore[attr-defined]
    dialog.accept()


@contextlib.contextmanager
def api_as(server: Server, user: str) -> Iterator[httpx.Client]:
    """The API, logged in as ``user`` with a bearer token."""
    client = server.login(user)
    try:
        yield client
    finally:
        client.close()


def submit_by_api(server: Server, user: str, script: str, name: str) -> str:
    with api_as(server, user) as client:
        answer = client.post(
            "/job/ln3",
            data={"jobscript": script, "jobconf": f'{{"job_name": {json_string(name)}}}'},
        )
        assert answer.status_code == 200, answer.text
        jobid: str = answer.json()["output"]["jobid"]
        return jobid


def json_string(text: str) -> str:
    return json.dumps(text)


def job_state(server: Server, user: str, jobid: str) -> str:
    with api_as(server, user) as client:
        state: str = client.get(f"/job/ln3/{jobid}").json()["output"]["status"][jobid]
        return state


def cancelled_by(user: str, jobid: str) -> bool:
    """Whether accounting says ``user`` cancelled the job (other test sessions on this
    shared cluster cancel every test user's jobs as root when they end)."""
    uid = pwd.getpwnam(user).pw_uid
    state = subprocess.run(
        ["sacct", "-j", jobid, "-X", "-n", "-o", "state%40"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return f"CANCELLED by {uid}" in state


def serious_violations(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def mark_page(page: Page) -> None:
    """A mark that a reload would wipe: the page must update in place."""
    page.evaluate("window.__notReloaded = true")


def not_reloaded(page: Page) -> bool:
    return bool(page.evaluate("window.__notReloaded === true"))


def test_alice_logs_in_sees_the_cluster_submits_from_a_template_and_watches_it_end(
    browser: Browser, local_server: Server, pages: list[Page], shots: Shots
) -> None:
    page = open_page(pages, browser, local_server, None)
    page.goto("/web/m/ln3/jobs")
    expect(page).to_have_url(re.compile(r"/web/login\?next="))
    shots.take(page, "login")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wonderland")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/web/m/ln3/jobs$"))  # back where she was going

    page.get_by_role("link", name="Clusters").click()
    ln3 = page.locator("section.card", has=page.get_by_role("heading", name=re.compile("^ln3")))
    expect(ln3).to_be_visible()
    expect(ln3.get_by_role("table")).to_contain_text("work")  # nodes of each partition
    expect(ln3).to_contain_text("Up to date")
    shots.take(page, "clusters")

    page.get_by_role("link", name="Submit", exact=True).click()
    page.get_by_role("link", name="MPI").click()
    expect(page.get_by_label("Nodes", exact=True)).to_have_value("2")
    page.get_by_role("link", name="Serial").click()
    expect(page.get_by_label("Job script")).to_have_value(re.compile(r"^#!/bin/bash"))
    page.get_by_label("Job name").fill("web-serial")
    page.get_by_label("Job script").fill("#!/bin/bash\necho hello from the dashboard\nsleep 4\n")
    page.get_by_label("Partition").select_option("debug")
    shots.take(page, "submit", full_page=True)
    page.get_by_role("button", name="Submit job").click()

    expect(page).to_have_url(re.compile(r"/web/m/ln3/jobs/\d+$"))
    jobid = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-name")).to_have_text("web-serial")
    mark_page(page)
    state = page.locator("#job-state")
    expect(state).to_have_class(re.compile("phase-finished"), timeout=LIVE)
    assert not_reloaded(page)
    # Completed; unless another test session on this shared cluster cancelled alice's jobs
    assert state.inner_text().strip() in ("Completed", "Cancelled")
    expect(page.get_by_role("table")).to_contain_text(f"{jobid}.batch")
    shots.take(page, "job")


def test_my_jobs_updates_live_and_kill_asks_first(
    browser: Browser, local_server: Server, pages: list[Page], shots: Shots
) -> None:
    page = open_page(pages, browser, local_server, "alice")
    page.goto("/web/m/ln3/jobs")
    mark_page(page)
    jobid = submit_by_api(local_server, "alice", "#!/bin/bash\nsleep 300\n", "web-long")
    row = page.get_by_role("row", name=re.compile(rf"^{jobid} "))
    expect(row).to_contain_text("web-long", timeout=LIVE)  # appeared without a reload
    expect(row).to_contain_text("Running", timeout=LIVE)
    assert not_reloaded(page)
    shots.take(page, "my-jobs")

    row.get_by_role("button", name=f"Kill {jobid}").click()
    # gone by a later snapshot, well before the 60 s safety poll (the kill's own event
    # finds the job still completing)
    expect(row).to_have_count(0, timeout=SNAPSHOTS_BEFORE_THE_SAFETY_POLL)
    assert page.dialogs == [f"Kill job {jobid} (web-long)?"]  # type: ignore[attr-defined]
    wait_for(lambda: job_state(local_server, "alice", jobid) == "Cancelled", what="the kill")


def test_bob_sees_nothing_of_alices_jobs_and_cannot_kill_them(
    browser: Browser, local_server: Server, pages: list[Page]
) -> None:
    jobid = submit_by_api(local_server, "alice", "#!/bin/bash\nsleep 120\n", "alice-only")
    try:
        page = open_page(pages, browser, local_server, "bob")
        page.goto("/web/m/ln3/jobs")
        expect(page.get_by_role("heading", name="My jobs on ln3")).to_be_visible()
        expect(page.locator("main")).not_to_contain_text("alice-only")
        answer = page.goto(f"/web/m/ln3/jobs/{jobid}")
        assert answer is not None and answer.status == 403
        expect(page.get_by_role("alert")).to_contain_text("belongs to another user")
        expect(page.locator("main")).not_to_contain_text("alice-only")

        # Even a hand-made kill with bob's own valid token is refused by the service.
        token = page.locator("input[name=csrf_token]").first.get_attribute("value")
        refused = page.request.post(
            f"/web/m/ln3/jobs/{jobid}/kill",
            form={"csrf_token": token or "", "confirmed": "yes"},
            headers={"Origin": local_server.url},
        )
        assert refused.status == 403
        assert not cancelled_by("bob", jobid)
    finally:
        with api_as(local_server, "alice") as alice:
            alice.delete(f"/job/ln3/{jobid}")


def test_a_job_named_like_html_shows_as_text(
    browser: Browser, local_server: Server, pages: list[Page]
) -> None:
    jobid = submit_by_api(local_server, "alice", "#!/bin/bash\nsleep 60\n", XSS_NAME)
    try:
        page = open_page(pages, browser, local_server, "alice")
        page.goto("/web/m/ln3/jobs")
        row = page.get_by_role("row", name=re.compile(rf"^{jobid} "))
        expect(row.locator("td.name")).to_have_text(XSS_NAME, timeout=LIVE)
        page.goto(f"/web/m/ln3/jobs/{jobid}")
        expect(page.locator("#job-name")).to_have_text(XSS_NAME)
        assert page.locator("main img").count() == 0
        assert page.dialogs == []  # type: ignore[attr-defined]
    finally:
        with api_as(local_server, "alice") as alice:
            alice.delete(f"/job/ln3/{jobid}")


def test_submit_shows_the_servers_message_next_to_the_field(
    browser: Browser, local_server: Server, pages: list[Page], shots: Shots
) -> None:
    page = open_page(pages, browser, local_server, "alice")
    page.goto("/web/m/ln3/submit")
    page.get_by_label("Job script").fill("echo no interpreter line\n")
    page.get_by_role("button", name="Submit job").click()
    script = page.get_by_label("Job script")
    expect(script).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#jobscript-error")).to_contain_text("must start with an interpreter line")
    expect(script).to_have_accessible_description(re.compile("interpreter line such as"))
    shots.take(page, "submit-error")


def test_command_shows_output_error_and_exit_code(
    browser: Browser, local_server: Server, pages: list[Page], shots: Shots
) -> None:
    page = open_page(pages, browser, local_server, "alice")
    page.goto("/web/m/ln3/command")
    page.get_by_label("Command line").fill("id -un; echo oops >&2; exit 3")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#command-output")).to_have_text("alice\n")
    expect(page.locator("#command-error")).to_have_text("oops\n")
    expect(page.locator("#retcode")).to_have_text("3")
    shots.take(page, "command")


def test_keyboard_alone_reaches_the_editor_and_leaves_it(
    browser: Browser, local_server: Server, pages: list[Page]
) -> None:
    page = open_page(pages, browser, local_server, "alice")
    page.goto("/web/m/ln3/submit")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the content")).to_be_focused()
    editor = page.get_by_label("Job script")
    editor.focus()
    page.keyboard.press("Control+End")
    page.keyboard.press("Tab")  # indents inside the editor
    expect(editor).to_be_focused()
    assert editor.input_value().endswith("\t")
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")  # and Esc, Tab leaves it
    expect(editor).not_to_be_focused()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible


def test_language_switch_and_accept_language(
    browser: Browser, local_server: Server, pages: list[Page], shots: Shots
) -> None:
    page = open_page(pages, browser, local_server, "alice")
    page.goto("/web/")
    page.get_by_role("link", name="简体中文").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("集群")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    page.goto("/web/m/ln3/submit")  # the choice is remembered
    expect(page.get_by_role("button", name="提交作业")).to_be_visible()
    shots.take(page, "submit-zh", full_page=True)
    page.get_by_role("link", name="English").click()
    expect(page.get_by_role("button", name="Submit job")).to_be_visible()

    chinese = open_page(pages, browser, local_server, None, locale="zh-CN")
    chinese.goto("/web/login")
    expect(chinese.get_by_role("button", name="登录")).to_be_visible()


def test_log_out_ends_the_session_for_the_api_too(
    browser: Browser, local_server: Server, pages: list[Page]
) -> None:
    page = open_page(pages, browser, local_server, "alice")
    cookie = next(c for c in page.context.cookies() if c["name"] == "newt_sessionid")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    session = {"newt_sessionid": cookie["value"]}
    with httpx.Client(base_url=f"{local_server.url}/api", cookies=session) as api:  # the same
        assert api.get("/auth").json()["output"]["username"] == "alice"
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(re.compile(r"/web/login$"))
        assert api.get("/auth").json()["output"]["auth"] is False
    page.goto("/web/m/ln3/jobs")
    expect(page).to_have_url(re.compile(r"/web/login\?next="))


def test_pages_read_without_javascript_and_kill_confirms_on_a_page(
    browser: Browser, local_server: Server, pages: list[Page], shots: Shots
) -> None:
    jobid = submit_by_api(local_server, "alice", "#!/bin/bash\nsleep 120\n", "no-script")
    page = open_page(pages, browser, local_server, "alice", java_script_enabled=False)
    page.goto("/web/m/ln3/jobs")
    row = page.get_by_role("row", name=re.compile(rf"^{jobid} "))
    expect(row).to_contain_text("no-script")
    page.get_by_role("link", name=jobid, exact=True).click()
    expect(page.locator("#job-name")).to_have_text("no-script")
    page.get_by_role("button", name="Kill").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Kill job {jobid}?")
    shots.take(page, "kill-confirm")
    page.get_by_role("button", name="Kill").click()
    expect(page).to_have_url(re.compile(rf"/web/m/ln3/jobs/{jobid}$"))
    wait_for(lambda: job_state(local_server, "alice", jobid) == "Cancelled", what="the kill")


def test_api_docs_open_offline_and_list_the_routes(
    browser: Browser, local_server: Server, pages: list[Page], shots: Shots
) -> None:
    page = open_page(pages, browser, local_server, None)
    elsewhere: list[str] = []
    own = urlsplit(local_server.url).netloc

    def only_the_gateway(route: playwright_api.Route) -> None:
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:  # as on a machine without internet
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_gateway)
    page.goto("/api/docs")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/job/{name}" in paths and "/api/auth" in paths
    assert elsewhere == []
    shots.take(page, "api-docs")


def test_every_page_passes_the_accessibility_check(
    browser: Browser, local_server: Server, pages: list[Page]
) -> None:
    jobid = submit_by_api(local_server, "alice", "#!/bin/bash\nsleep 60\n", "a11y")
    try:
        anonymous = open_page(pages, browser, local_server, None)
        anonymous.goto("/web/login")
        found = {"login": serious_violations(anonymous)}
        page = open_page(pages, browser, local_server, "alice")
        for name, url in {
            "clusters": "/web/",
            "my jobs": "/web/m/ln3/jobs",
            "job": f"/web/m/ln3/jobs/{jobid}",
            "submit": "/web/m/ln3/submit",
            "command": "/web/m/ln3/command",
            "files": "/web/m/ln3/files",
        }.items():
            page.goto(url)
            found[name] = serious_violations(page)
        page.goto("/web/m/ln3/submit")
        page.get_by_label("Job name").fill("bad\tname")
        page.get_by_role("button", name="Submit job").click()
        expect(page.locator("#job_name-error")).to_be_visible()
        found["submit with errors"] = serious_violations(page)
        assert {name: v for name, v in found.items() if v} == {}
    finally:
        with api_as(local_server, "alice") as alice:
            alice.delete(f"/job/ln3/{jobid}")


def test_job_output_follows_live(browser: Browser, local_server: Server, pages: list[Page]) -> None:
    with local_server.client() as api:
        routes = api.get("/openapi.json").json()["paths"]
    if "/api/job/{name}/{jobid}/output" not in routes:
        pytest.skip("this gateway does not serve job output yet (issue 13)")
    page = open_page(pages, browser, local_server, "alice")
    script = "#!/bin/bash\nfor i in 1 2 3; do echo line $i; sleep 1; done\n"
    jobid = submit_by_api(local_server, "alice", script, "web-output")
    page.goto(f"/web/m/ln3/jobs/{jobid}")
    expect(page.locator("[data-stream=stdout]")).to_contain_text("line 3", timeout=LIVE)


@pytest.fixture
def alices_folder(local_server: Server) -> Iterator[str]:
    """A fresh directory name in alice's home, removed at the end whatever happened."""
    folder = f"web-files-{uuid.uuid4().hex[:8]}"
    yield folder
    with api_as(local_server, "alice") as alice:
        alice.delete(f"/file/ln3/~/{folder}", params={"recursive": "true"})


def file_row(page: Page, name: str) -> playwright_api.Locator:
    return page.locator(
        "#file-listing tbody tr", has=page.get_by_role("link", name=name, exact=True)
    )


def test_files_make_a_directory_upload_download_view_and_delete(
    browser: Browser,
    local_server: Server,
    pages: list[Page],
    shots: Shots,
    alices_folder: str,
    tmp_path: Path,
) -> None:
    home = pwd.getpwnam("alice").pw_dir
    page = open_page(pages, browser, local_server, "alice")
    page.get_by_role("link", name="Files", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/web/m/ln3/files{home}$"))  # starts at home
    crumbs = page.get_by_role("navigation", name="Path")
    expect(crumbs.get_by_role("link", name="alice")).to_have_attribute("aria-current", "page")

    page.get_by_label("New directory name").fill(alices_folder)
    page.get_by_role("button", name="Make directory").click()
    expect(page.get_by_role("status").first).to_have_text(f"Made the directory {alices_folder}.")
    page.get_by_role("link", name=f"{alices_folder}/", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/web/m/ln3/files{home}/{alices_folder}$"))
    expect(page.locator("#file-listing")).to_contain_text("This directory is empty.")

    # Upload (with its progress bar, the page staying put), then download the same bytes.
    payload = random.Random(17).randbytes(3 * 1024 * 1024 + 5)
    source = tmp_path / "data.bin"
    source.write_bytes(payload)
    mark_page(page)
    page.get_by_label("File to upload").set_input_files(str(source))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("[data-upload-status]")).to_have_text("Uploaded data.bin.", timeout=LIVE)
    expect(page.get_by_label("Upload progress")).to_have_js_property("value", 100)
    expect(file_row(page, "data.bin")).to_contain_text("3.0 MiB")
    assert not_reloaded(page)
    with page.expect_download() as download:
        file_row(page, "data.bin").get_by_role("link", name="Download data.bin").click()
    downloaded = Path(download.value.path()).read_bytes()
    assert hashlib.sha256(downloaded).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert download.value.suggested_filename == "data.bin"

    # A text file: its first lines, then its last.
    text = tmp_path / "notes.txt"
    text.write_text("".join(f"line {n:03}\n" for n in range(1, 301)))
    page.get_by_label("File to upload").set_input_files(str(text))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("[data-upload-status]")).to_have_text("Uploaded notes.txt.", timeout=LIVE)
    shots.take(page, "files", full_page=True)
    assert serious_violations(page) == []
    page.get_by_role("link", name="notes.txt", exact=True).click()
    shown = page.locator("#file-text")
    expect(page.get_by_role("heading", name="First 200 lines")).to_be_visible()
    expect(shown).to_contain_text("line 001\n")
    expect(shown).to_contain_text("line 200\n")
    expect(shown).not_to_contain_text("line 201")
    shots.take(page, "file-view")
    assert serious_violations(page) == []
    page.get_by_role("link", name="Show the end").click()
    expect(shown).to_contain_text("line 300\n")
    expect(shown).not_to_contain_text("line 100\n")

    # Delete asks first; the file is gone from the listing and from the machine.
    crumbs.get_by_role("link", name=alices_folder, exact=True).click()
    file_row(page, "notes.txt").get_by_role("button", name="Delete notes.txt").click()
    expect(page.get_by_role("status").first).to_have_text("Deleted notes.txt.")
    expect(file_row(page, "notes.txt")).to_have_count(0)
    assert page.dialogs == ["Delete notes.txt?"]  # type: ignore[attr-defined]
    with api_as(local_server, "alice") as alice:
        assert alice.get(f"/file/ln3/~/{alices_folder}/notes.txt").status_code == 404
        assert alice.get(f"/file/ln3/~/{alices_folder}/data.bin").status_code == 200


def test_files_without_javascript_upload_and_delete_on_a_confirmation_page(
    browser: Browser,
    local_server: Server,
    pages: list[Page],
    shots: Shots,
    alices_folder: str,
    tmp_path: Path,
) -> None:
    with api_as(local_server, "alice") as alice:
        assert alice.post(f"/file/ln3/~/{alices_folder}", data={"op": "mkdir"}).status_code == 200
    home = pwd.getpwnam("alice").pw_dir
    page = open_page(pages, browser, local_server, "alice", java_script_enabled=False)
    page.goto(f"/web/m/ln3/files{home}/{alices_folder}")
    source = tmp_path / "plain.txt"
    source.write_text("posted without a script\n")
    page.get_by_label("File to upload").set_input_files(str(source))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("status").first).to_have_text("Uploaded plain.txt.")
    row = file_row(page, "plain.txt")
    expect(row).to_contain_text("24 B")
    row.get_by_role("button", name="Delete plain.txt").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delete plain.txt?")
    shots.take(page, "file-delete-confirm")  # (axe needs JavaScript: checked elsewhere)
    page.get_by_role("link", name="Keep it").click()
    expect(file_row(page, "plain.txt")).to_have_count(1)  # kept
    file_row(page, "plain.txt").get_by_role("button", name="Delete plain.txt").click()
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status").first).to_have_text("Deleted plain.txt.")
    expect(file_row(page, "plain.txt")).to_have_count(0)


def test_bob_cannot_read_alices_private_file(
    browser: Browser, local_server: Server, pages: list[Page], alices_folder: str
) -> None:
    secret = f"~/{alices_folder}/secret.txt"
    with api_as(local_server, "alice") as alice:
        assert alice.post(f"/file/ln3/~/{alices_folder}", data={"op": "mkdir"}).status_code == 200
        assert alice.put(f"/file/ln3/{secret}", content=b"for alice only\n").status_code == 200
        assert alice.post(f"/file/ln3/{secret}", data={"op": "chmod", "mode": "600"}).is_success
    path = f"{pwd.getpwnam('alice').pw_dir}/{alices_folder}/secret.txt"
    page = open_page(pages, browser, local_server, "bob")
    answer = page.goto(f"/web/m/ln3/files{path}")
    assert answer is not None and answer.status == 403
    expect(page.get_by_role("alert")).to_contain_text("Permission denied")
    expect(page.locator("main")).not_to_contain_text("for alice only")
    download = page.request.get(f"/api/file/ln3{path}?download=true")
    assert download.status == 403 and b"for alice only" not in download.body()
    # nor delete it with his own valid token
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    refused = page.request.post(
        f"/web/m/ln3/delete{path}",
        form={"csrf_token": token or "", "confirmed": "yes"},
        headers={"Origin": local_server.url},
    )
    assert refused.status == 403
    with api_as(local_server, "alice") as alice:
        assert alice.get(f"/file/ln3/{secret}", params={"view": "read"}).content == (
            b"for alice only\n"
        )
