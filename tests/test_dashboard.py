"""``/dashboard``: the server-rendered page and its JSON, then the page live in headless
Chromium (selenium + Debian's chromium-driver) against a running node, on SQLite and
PostgreSQL.

Without Chromium the browser test is skipped, or fails under JOBNODE_REQUIRE_SERVICES=1.
``JOBNODE_DASHBOARD_SCREENSHOT=path`` also saves its screenshot there (the README's
``examples/dashboard.png`` is made that way).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.jobs.dashboard import Dashboard
from tests.helpers import job, submit
from tests.operator_support import TOKEN, container, metric, parse_metrics, scheduled, wait_for
from tests.support import unavailable, wait_finished

CHROMIUM = os.environ.get("JOBNODE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("JOBNODE_CHROMEDRIVER", "/usr/bin/chromedriver")


async def test_page_and_data(make_node, host_service, client_address):
    echo, fail = host_service("echo"), host_service("fail")
    ok, bad = f"ok-{client_address}", f"bad-{client_address}"
    async with (
        make_node(scheduled(container(ok, echo.url), container(bad, fail.url))) as node,
        node.client(client_address) as http,
    ):
        done = await submit(http, job(ok, data={"<b>": "<script>alert(1)</script>"}))
        failed = await submit(http, job(bad))
        await wait_finished(http, [done, failed])
        # Due in about an hour (two intervals, a minute apart): active, and due within the hour.
        await submit(http, job(ok, subscription={"period": 60, "frequency": 2, "active_at": int(time.time()) + 3600}))
        r = await http.get("/dashboard")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'nonce-" in csp
        page = r.text
        for asset in ('href="http', 'src="http', "@import", "url("):  # inline CSS and JS only
            assert asset not in page, asset
        nonce = csp.split("'nonce-")[1].split("'")[0]
        assert page.count(f'nonce="{nonce}"') == 2
        assert done[:8] in page and failed[:8] in page and "HTTP 500: {&quot;detail&quot;: &quot;boom&quot;}" in page
        assert ok in page and bad in page
        assert re.search(r'id="card-next-due">[\d.]+ (ms|s|min)<', page) and "next subscription due in" in page
        assert re.search(r'id="card-missed">\d+<', page)
        assert "intervals missed (this node)" in page

        data = (await http.get("/dashboard/data")).json()
        assert set(data) >= {"now", "node", "queue", "depth", "throughput", "containers", "recent", "failed"}
        subscriptions = data["subscriptions"]
        assert set(subscriptions) == {"active", "next_due", "missed"}
        assert subscriptions["active"] >= 1  # the database is shared with other tests
        # This node's count (the process's, shared by the tests of this run), as /metrics says.
        scraped = parse_metrics((await http.get("/metrics")).text)
        assert subscriptions["missed"] == metric(scraped, "jobnode_subscription_intervals_missed_total")
        due_in = datetime.fromisoformat(subscriptions["next_due"]) - datetime.fromisoformat(data["now"])
        assert due_in <= timedelta(minutes=60)  # this one's, or another test's sooner
        assert len(data["throughput"]) == 10 and sum(m["success"] + m["failed"] for m in data["throughput"]) >= 2
        assert done in [j["id"] for j in data["recent"]]
        (failure,) = [j for j in data["failed"] if j["id"] == failed]
        assert failure["error"] == f'{bad}: HTTP 500: {{"detail": "boom"}}'
        assert [c["id"] for c in data["containers"]] == [ok, bad]
        assert data["depth"], "the queue depth is sampled from the start"


# -- in a real browser ------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        unavailable("Chromium", f"{CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        unavailable("selenium", str(exc))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1700",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


async def _in_thread(call: Callable[..., Any], *args: Any) -> Any:
    """Selenium blocks: the node serving the browser runs on this test's event loop."""
    return await asyncio.to_thread(call, *args)


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


async def _shows(driver: Any, element_id: str, *needles: str) -> bool:
    text = await _in_thread(_text, driver, element_id)
    return all(needle in text for needle in needles)


async def _count_at_least(driver: Any, element_id: str, minimum: int) -> bool:
    text = await _in_thread(_text, driver, element_id)
    return text.isdigit() and int(text) >= minimum  # the database is shared with other tests


async def test_dashboard_in_chromium(make_node, host_service, client_address, browser, tmp_path, monkeypatch):
    monkeypatch.setattr(Dashboard, "SAMPLE_SECONDS", 0.3)
    echo, fail, slow = host_service("echo"), host_service("fail"), host_service("slow", DELAY=30)
    config = scheduled(
        container("echo", echo.url, description="returns its input"),
        container("transform", fail.url),
        container("slow", slow.url),
        server={"operator_token": TOKEN},
    )
    async with make_node(config) as node, node.client(client_address) as http:
        warmup = [await submit(http, job("echo", data={"i": i})) for i in range(6)]
        await wait_finished(http, warmup)
        # The token once in the address: the page answers with a cookie and drops it from the URL.
        await _in_thread(browser.get, f"{node.url}/dashboard?token={TOKEN}")
        assert browser.current_url == f"{node.url}/dashboard"
        assert "jobnode" in browser.title
        cookies = {c["name"]: c for c in await _in_thread(browser.get_cookies)}
        assert cookies["jobnode_operator"]["httpOnly"] is True
        await wait_for(lambda: _shows(browser, "containers", "echo", "ready"))

        # A job submitted now shows up without reloading; so does a failure and its error.
        running = await submit(http, job("slow", data={"job": "dash"}))
        failed = await submit(http, job("echo", "transform", data={"x": 1}))
        await wait_for(lambda: _shows(browser, "recent", running[:8], "running"), timeout=15)
        await wait_for(lambda: _shows(browser, "failed", failed[:8], 'HTTP 500: {"detail": "boom"}'), timeout=15)
        await wait_for(lambda: _count_at_least(browser, "card-running", 1), timeout=15)
        # A subscription due in an hour: the cards follow without reloading.
        later = int(time.time()) + 3600
        await submit(http, job("echo", subscription={"period": 60, "frequency": 2, "active_at": later}))
        await wait_for(lambda: _count_at_least(browser, "card-subscriptions", 1), timeout=15)
        await wait_for(lambda: _shows(browser, "card-next-due", " min"), timeout=15)
        assert (await _in_thread(_text, browser, "card-missed")).isdigit()

        # Drill down: the failed job's steps, the output of the first and the error of the second.
        from selenium.webdriver.common.by import By

        row = await _in_thread(browser.find_element, By.CSS_SELECTOR, f'#failed tr[data-id="{failed}"]')
        await _in_thread(row.click)
        await wait_for(
            lambda: _shows(browser, "detail-body", failed, "transform", 'HTTP 500: {"detail": "boom"}', '"x": 1'),
            timeout=10,
        )
        logs = await _in_thread(browser.get_log, "browser")
        assert not [entry for entry in logs if entry["level"] == "SEVERE"], logs
        await asyncio.sleep(1.0)  # a few depth samples for the chart
        shot = tmp_path / "dashboard.png"
        assert await _in_thread(browser.save_screenshot, str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("JOBNODE_DASHBOARD_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["JOBNODE_DASHBOARD_SCREENSHOT"])
        assert (await http.delete(f"/api/jobs/{running}", headers={"Authorization": f"Bearer {TOKEN}"})).is_success
