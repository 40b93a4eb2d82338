"""The web dashboard: server render time of a big listing, page weight, browser timings.

    .venv/bin/python -m bench.web [--jobs 1000] [--renders 50]

1. **Server render**: the "My jobs" page for a user with ``--jobs`` queued jobs, rendered
   by the page code itself (filter, sort, Jinja2) from synthetic scheduler records:
   median and p95 over ``--renders`` renders. No network, no scheduler.
2. **Weight of the first page**: that HTML plus every stylesheet and script the page
   loads, raw and gzip-compressed (the gateway compresses static files; pages are sent
   uncompressed, against BREACH: behind nginx, gzip them there if wanted).
3. **Browser** (needs root and the cluster: a real gateway is started): Chromium opens
   "My jobs" for alice; navigation timing (DOMContentLoaded, load), then the time from a
   submit through the API until the job's row shows on the open page (live update).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpcgate.schedulers.base import JobRecord, Phase
from hpcgate.web import pages, templates
from hpcgate.web.i18n import Translator

STATIC_DIR = Path(templates.__file__).parent / "static"


def synthetic_jobs(count: int) -> list[JobRecord]:
    jobs = []
    for index in range(count):
        running = index % 3 == 0
        jobs.append(
            JobRecord(
                id=str(100000 + index),
                name=f"simulation-{index:05d}",
                user="alice",
                state="RUNNING" if running else "PENDING",
                partition="work" if index % 2 else "debug",
                elapsed=f"{index % 24}:{index % 60:02d}:{index % 59:02d}" if running else "0:00",
                nodes=1 + index % 8,
                tasks=None,
                nodelist=f"node[{1 + index % 4}-4]" if running else "(Priority)",
                exit_code="0:0",
                phase=Phase.RUNNING if running else Phase.QUEUED,
                code="R" if running else "PD",
                uid=1001,
            )
        )
    return jobs


def render_listing(jobs: list[JobRecord]) -> str:
    """The page as ``pages.my_jobs`` renders it, minus the request."""
    view = pages.ListingView(text="", phase="", sort="id", descending=False)
    visitor = templates.Visitor(None, "en", "0" * 64, ["ln3"])
    context: dict[str, Any] = {
        "finished": [],
        "machine": "ln3",
        "jobs": view.apply(jobs),
        "total": len(jobs),
        "view": view,
        "age": 2,
        "poll": 3.5,
        "events": True,
        "event_names": pages.EVENT_NAMES,
        "section": "jobs",
    }
    return templates.ENVIRONMENT.get_template("jobs.html").render(
        t=Translator("en"),
        lang="en",
        visitor=visitor,
        user="alice",
        csrf=visitor.csrf,
        path="/web/m/ln3/jobs",
        query="",
        **context,
    )


def server_render(count: int, renders: int) -> tuple[list[float], str]:
    jobs = synthetic_jobs(count)
    render_listing(jobs)  # templates compiled once, as in a running gateway
    times = []
    html = ""
    for _ in range(renders):
        started = time.perf_counter()
        html = render_listing(jobs)
        times.append((time.perf_counter() - started) * 1000)
    return times, html


def page_assets() -> list[Path]:
    return [
        STATIC_DIR / "dashboard.css",
        STATIC_DIR / "dashboard.js",
        STATIC_DIR / "vendor/htmx-2.0.11/htmx.min.js",
        STATIC_DIR / "vendor/htmx-ext-sse-2.2.4/sse.min.js",
        STATIC_DIR / "favicon.svg",
    ]


def weight(html: str) -> list[tuple[str, int, int]]:
    rows = [("HTML", len(html.encode()), len(gzip.compress(html.encode(), 6)))]
    for path in page_assets():
        data = path.read_bytes()
        rows.append((path.name, len(data), len(gzip.compress(data, 6))))
    return rows


def browser_timings() -> dict[str, float]:
    """Navigation timing and the live update, in Chromium against a real gateway."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from playwright.sync_api import sync_playwright
    from tests.conftest import PASSWORDS, gateway_config, start_server, stop_server
    from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS

    workdir = Path(tempfile.mkdtemp(prefix="hpcgate-bench-web-"))
    workdir.chmod(0o755)
    server = start_server(gateway_config(workdir, "local", None), workdir)
    api = server.login("alice")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(base_url=server.url)
            page.goto("/web/login")
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password").fill(PASSWORDS["alice"])
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url("**/web/")
            page.goto("/web/m/ln3/jobs")
            timing = page.evaluate(
                "(() => { const n = performance.getEntriesByType('navigation')[0];"
                " return {dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd,"
                " bytes: n.transferSize}; })()"
            )
            started = time.monotonic()
            answer = api.post(
                "/job/ln3",
                data={"jobscript": "#!/bin/bash\nsleep 30\n", "jobconf": '{"job_name": "bench"}'},
            )
            jobid = answer.json()["output"]["jobid"]
            page.locator(f"#job-{jobid}").wait_for(timeout=60_000)
            update = time.monotonic() - started
            api.delete(f"/job/ln3/{jobid}")
            browser.close()
    finally:
        api.close()
        stop_server(server)
    return {
        "DOMContentLoaded (ms)": timing["dcl"],
        "load (ms)": timing["load"],
        "submit to row on the open page (ms)": update * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--renders", type=int, default=50)
    parser.add_argument("--no-browser", action="store_true", help="skip part 3")
    args = parser.parse_args()

    times, html = server_render(args.jobs, args.renders)
    print(f"## Server render of My jobs with {args.jobs} jobs ({args.renders} renders)\n")
    print("| median (ms) | p95 (ms) | max (ms) |\n|---:|---:|---:|")
    ordered = sorted(times)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    print(f"| {statistics.median(times):.1f} | {p95:.1f} | {max(times):.1f} |\n")

    print(f"## Weight of that page and what it loads ({args.jobs} jobs)\n")
    print("| part | raw (KB) | gzip (KB) |\n|---|---:|---:|")
    rows = weight(html)
    for name, raw, packed in rows:
        print(f"| {name} | {raw / 1024:.1f} | {packed / 1024:.1f} |")
    print(
        f"| **total** | {sum(r[1] for r in rows) / 1024:.1f} | "
        f"{sum(r[2] for r in rows) / 1024:.1f} |\n"
    )
    _, small = server_render(10, 1)
    print(f"(With 10 jobs the HTML is {len(small.encode()) / 1024:.1f} KB raw.)\n")

    if not args.no_browser:
        print("## Browser (Chromium, headless, loopback)\n")
        print("| measure | value |\n|---|---:|")
        for name, value in browser_timings().items():
            print(f"| {name} | {value:.0f} |")


if __name__ == "__main__":
    main()
