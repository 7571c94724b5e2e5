"""The energy dashboard in real headless Chromium against a real ``tbftd serve`` and an emulated
UM25C: it loads without errors, follows a job live, and draws the job's energy and power trace.

``TBFTD_DASHBOARD_SCREENSHOT=path.png`` makes the meter follow the daemon's CPU load, runs a second
job on another block (so the chart has a legend worth seeing) and saves full-page screenshots: one
while that job runs (``path-running.png``) and one at the end (``path.png``), e.g. for
``docs/dashboard.png``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from drift.scenarios import shapes_scenario
from energy.emulator import Emulator
from energy.profiles import CpuLoadProfile
from service.payloads import encode_raw_batch
from tests.running_daemon import Daemon

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google's services,
# which on a closed network is a stream of refused connections.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOT_ENV = "TBFTD_DASHBOARD_SCREENSHOT"
TOKEN = "dashboard-test-token"
CONTEXT = "site-a"
TIMEOUT_MS = 90_000


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium from the system package, driven by Playwright."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing: pip install -e '.[test]'")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class ProcessTreeLoad:
    """The CPU load of one process and its children, as a fraction of all cores: what a Pi's power
    follows when the daemon is all it runs (this machine's own load includes other work)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self._processes: dict[int, psutil.Process] = {}  # kept: cpu_percent measures between calls

    def __call__(self) -> float:
        if self.pid is None:
            return 0.0
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        percent = 0.0
        for process in tree:
            try:
                percent += self._processes.setdefault(process.pid, process).cpu_percent(None)
            except psutil.Error:
                pass
        return percent / (100.0 * (psutil.cpu_count() or 1))


@pytest.fixture
def meter(request: pytest.FixtureRequest) -> Iterator[tuple[Emulator, ProcessTreeLoad | None]]:
    """The emulated UM25C at a constant 4.5 W; for a screenshot, one whose power follows the
    daemon's CPU load (Pi 4B-like coefficients), so the trace rises above its idle baseline."""
    if not os.environ.get(SCREENSHOT_ENV):
        yield request.getfixturevalue("um25c_meter"), None
        return
    load = ProcessTreeLoad()
    emulator = Emulator(model="um25c", profile=CpuLoadProfile(load_fraction=load))
    emulator.start()
    try:
        yield emulator, load
    finally:
        emulator.stop()


class PageProblems:
    """Console errors, uncaught exceptions, failed requests and HTTP errors seen by a page."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.problems.append(f"console: {msg.text}"))
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))
        page.on("requestfailed", lambda req: self.problems.append(f"failed: {req.url} {req.failure}"))
        page.on("response", lambda res: res.status >= 400 and self.problems.append(f"HTTP {res.status}: {res.url}"))


def post_samples(daemon: Daemon, count: int) -> dict[str, Any]:
    """Post ``count`` output-drifted samples to CONTEXT; returns the last reply."""
    scenario = shapes_scenario("output", train_size=count, val_size=0, test_size=0, seed=3)
    reply: dict[str, Any] = {}
    for start in range(0, count, 64):
        body, params = encode_raw_batch(scenario.train.x[start : start + 64])
        labels = ",".join(map(str, scenario.train.y[start : start + 64]))
        response = daemon.client.post(
            "/v1/samples", content=body, headers={"content-type": "application/octet-stream"},
            params={**params, "labels": labels, "context": CONTEXT, "device_id": "cam-3"},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        reply = response.json()
    return reply


def wait_for_job(daemon: Daemon, job_id: int, timeout_seconds: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_seconds
    while (job := daemon.client.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    return job


def test_the_dashboard_follows_a_job_and_draws_its_energy_and_power(
    tmp_path: Path, meter: tuple[Emulator, ProcessTreeLoad | None], browser: Any
) -> None:
    emulator, load = meter
    screenshot = os.environ.get(SCREENSHOT_ENV)
    # Two epochs keep the test quick; a picture for the docs shows what a job really gains.
    epochs = "10" if screenshot else "2"
    daemon = Daemon(tmp_path / "data", emulator.port, "--min-samples", "200", "--epochs", epochs, "--api-token", TOKEN)
    if load is not None:
        load.pid = daemon.process.pid
    daemon.client.headers["authorization"] = f"Bearer {TOKEN}"
    try:
        # Without the token the page says so, instead of failing silently.
        anonymous = browser.new_page()
        anonymous.goto(f"{daemon.url}/")
        anonymous.wait_for_selector("#alert:not([hidden])", timeout=TIMEOUT_MS)
        assert "?token=" in anonymous.inner_text("#alert")
        anonymous.close()

        page = browser.new_page(viewport={"width": 1360, "height": 900})
        seen = PageProblems(page)
        page.goto(f"{daemon.url}/?token={TOKEN}")
        assert "token" not in page.url, "the token must leave the address bar"
        page.wait_for_selector("#jobs-body tr.empty-row >> text=No jobs yet", timeout=TIMEOUT_MS)
        assert page.inner_text("#energy-chart").startswith("No measured jobs yet")

        hint = daemon.client.post("/v1/drift", json={"type": "output", "context": CONTEXT}).json()
        assert hint["status"] == "waiting for samples"
        job_id = post_samples(daemon, 200)["job"]["id"]
        job = wait_for_job(daemon, job_id)
        assert job["state"] == "succeeded" and job["block"] == "fc", job

        # The open page picks the job up by itself: no reload.
        row = page.wait_for_selector(f'#jobs-body tr[data-job-id="{job_id}"] >> text=succeeded', timeout=TIMEOUT_MS)
        assert row is not None
        cells = page.locator(f'#jobs-body tr[data-job-id="{job_id}"] td').all_inner_texts()
        assert cells[0] == f"#{job_id}" and cells[2] == CONTEXT and cells[3] == "output" and "fc" in cells[4]
        assert "%" in cells[7] and "→" in cells[7]
        assert cells[8].endswith(" J") and cells[9].endswith(" J") and cells[10].endswith(" W")
        assert cells[11].startswith("meter") and "UM25C@" in cells[11]

        bar = page.wait_for_selector(f'#energy-chart svg [data-job-id="{job_id}"]', timeout=TIMEOUT_MS)
        assert "fc" in page.inner_text("#energy-legend")
        bar.click()
        # A constant meter draws a flat line, which has no height: wait for it to exist, not show.
        line = page.wait_for_selector("#trace-chart svg path.trace-line", state="attached", timeout=TIMEOUT_MS)
        assert int(line.get_attribute("data-points") or 0) > 0
        assert page.locator("#trace-chart svg circle.trace-point").count() > 0
        baseline = page.locator("#trace-chart svg line.baseline")
        assert baseline.count() == 1 and float(baseline.get_attribute("data-watts") or 0) > 0
        assert page.get_attribute(f'#jobs-body tr[data-job-id="{job_id}"]', "aria-selected") == "true"
        assert "J over" in page.inner_text("#trace-summary")

        status_text = page.inner_text("main .cards")
        # The default model is the base; the context the job adapted shows its own version.
        assert "version 1" in status_text and "v2" in status_text and "UM25C" in status_text

        if screenshot:
            second = daemon.client.post("/v1/jobs", json={"context": CONTEXT, "block": "block3"}).json()
            page.wait_for_selector(f'#jobs-body tr[data-job-id="{second["id"]}"] >> text=/epoch \\d/', timeout=TIMEOUT_MS)
            path = Path(screenshot)
            page.screenshot(path=path.with_name(f"{path.stem}-running{path.suffix}"), full_page=True)
            assert wait_for_job(daemon, second["id"])["state"] == "succeeded"
            page.wait_for_selector(f'#energy-chart svg [data-job-id="{second["id"]}"]', timeout=TIMEOUT_MS)
            page.click(f'#jobs-body tr[data-job-id="{job_id}"]')
            page.wait_for_selector("#trace-chart svg line.baseline", state="attached", timeout=TIMEOUT_MS)
            page.screenshot(path=screenshot, full_page=True)

        assert seen.problems == []
        assert page.is_hidden("#alert"), page.inner_text("#alert")

        # A daemon that goes away is reported on the page, not only in the console.
        assert daemon.stop() == 0, daemon.stderr_path.read_text()[-2000:]
        page.wait_for_selector("#alert:not([hidden]) >> text=Cannot reach the daemon", timeout=TIMEOUT_MS)
        assert "offline" in page.inner_text("#connection")
        page.close()
    finally:
        assert daemon.stop() == 0, daemon.stderr_path.read_text()[-2000:]
