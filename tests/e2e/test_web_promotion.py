"""Safe promotion in the web UI, in a real Chromium against a real server with real replicas:
a canary made with clicks, the split's bar, a split change, a promote through its confirmation."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import wait_build
from tests.e2e.browser import shot, sign_in
from tests.e2e.browser.fixtures import ADDER_V1, browser_fixture, page_fixture, site_fixture  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def predict(site, n: int) -> set[str]:
    """n predictions to adder; the builds that answered (X-Model-Build)."""
    seen = set()
    with httpx.Client(base_url=site.url) as c:
        for a in range(n):
            answer = c.post(
                "/models/adder/predict",
                json={"a": a, "b": 1},
                headers={"Authorization": f"Bearer {site.keys['adder']}"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json() == a + 1
            seen.add(answer.headers.get("x-model-build", "?"))
    return seen


def deploy(site, build: int, **settings) -> None:
    with site.api() as c:
        made = c.post("/api/v1/models/adder/deployments", json={"build": build, **settings})
        assert made.status_code == 202, made.text
        deadline = time.monotonic() + 90
        while c.get(f"/api/v1/models/adder/deployments/{made.json()['id']}").json()[
            "status"
        ] not in ("deployed", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert site.current_build("adder") == build


def test_a_replay_started_from_the_build_diff_shows_its_diffs(page, site):
    """Build 3 adds one more than build 1: a replay of build 1's captured requests on build 3,
    started beside their build diff, names the changed answers side by side."""
    plus_one = ADDER_V1.replace("return a + b", "return a + b + 1")
    three = site.start_build("adder", {"predict.py": plus_one}, message="one more")
    with site.api() as c:
        assert wait_build(c, "adder", three)["status"] == "built"
    deploy(site, 1, capture_percent=100, timeout_s=12)
    predict(site, 5)
    with site.api() as c:
        deadline = time.monotonic() + 30
        while len(c.get("/api/v1/models/adder/builds/1/captures").json()["items"]) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.2)

    page.goto(f"{site.url}/models/adder/builds/{three}/diff/1")
    sign_in(page, site.token)
    reports = page.get_by_role("region", name="Replay reports")
    expect(reports).to_contain_text(f"Replay reports #1 ↔ #{three}")
    expect(reports).to_contain_text("No replay yet")
    reports.get_by_role("button", name="Start replay…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator("#replay-from")).to_have_value("1")
    expect(dialog.locator("#replay-to")).to_have_value(str(three))
    expect(dialog).to_contain_text(f"Build #{three}'s replicas answer build #1's requests")
    dialog.get_by_role("button", name="Start replay").click()
    expect(dialog).to_be_hidden()

    report = page.locator("section.report")
    expect(report).to_have_attribute("data-verdict", "different", timeout=120_000)
    counts = report.get_by_role("table", name="Replay counts")
    expect(counts.locator("[data-count=replayed]")).to_have_text("5")
    expect(counts.locator("[data-count=equal]")).to_have_text("0")
    expect(counts.locator("[data-count=different]")).to_have_text("5")
    expect(counts.locator("[data-count=errors_to]")).to_have_text("0")
    diffs = report.get_by_role("table", name="Replay diffs")
    expect(diffs.locator("tr[data-path]")).to_have_count(5)
    first = diffs.locator("tr[data-path]").first
    expect(first.locator("td.old")).to_have_text(re.compile(r"^\d+(\.0)?$"))
    old = float(first.locator("td.old").inner_text())
    assert float(first.locator("td.new").inner_text()) == old + 1
    expect(first).to_have_attribute("data-path", "$")
    expect(page.get_by_role("table", name="Changed files")).to_be_visible()  # the build diff beside
    shot(page, "29-replay-report-diffs")

    # A viewer reads the model but no replay report: one short line, no error.
    with site.api() as c:
        made = c.post("/api/v1/tokens", json={"name": "replay-viewer", "role": "viewer"})
        viewer = made.json()["token"]
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, viewer)
    expect(page.get_by_test_id("replays-denied")).to_contain_text("deployers and admins")
    expect(page.get_by_role("region", name="Replay reports")).to_have_count(0)
    expect(page.get_by_role("alert")).to_have_count(0)
    page.get_by_role("button", name="Sign out").click()


def test_a_canary_made_with_clicks_is_split_then_promoted(page, site):
    page.goto(site.url + "/models/adder/traffic")
    sign_in(page, site.token)
    traffic = page.get_by_role("region", name="Traffic")
    expect(traffic).to_contain_text("Build #1 answers every request")
    expect(page.get_by_test_id("split")).to_have_count(0)

    # A percent outside 0–100 is refused in the form, before any request.
    traffic.get_by_role("button", name="Canary…").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("#canary-build").select_option("2")
    dialog.locator("#canary-percent").fill("150")
    expect(dialog.get_by_text("Between 0 and 100.")).to_be_visible()
    expect(dialog.get_by_role("button", name="Start the canary")).to_be_disabled()
    dialog.locator("#canary-percent").fill("30")
    expect(dialog.get_by_test_id("canary-what")).to_contain_text("Build #2 starts beside build #1")
    expect(dialog.get_by_test_id("canary-what")).to_contain_text("answers 30 % of the requests")
    shot(page, "30-canary-dialog")
    dialog.get_by_role("button", name="Start the canary").click()
    expect(dialog).to_be_hidden()

    bar = page.get_by_test_id("split")
    expect(bar).to_have_attribute("data-mode", "split")
    expect(page.get_by_test_id("split-label")).to_have_text("#1 70 % · #2 30 %")
    expect(page.get_by_test_id("split-mode")).to_have_text("split")
    expect(bar.locator("[data-role=primary]")).to_have_attribute("data-percent", "70")
    expect(bar.locator("[data-role=candidate]")).to_have_attribute("data-percent", "30")
    promote = traffic.get_by_role("button", name="Promote #2…")
    expect(promote).to_be_enabled(timeout=90_000)  # its replicas are ready: the split serves
    assert predict(site, 60) == {"1", "2"}
    candidate = page.locator("section[data-role=candidate]")
    expect(candidate).to_contain_text("Build #2")
    expect(candidate).to_contain_text(re.compile(r"[1-9]\d* requests"), timeout=20_000)
    expect(candidate.get_by_role("img", name="Requests per second")).to_be_visible(timeout=40_000)
    expect(page.locator("section[data-role=primary]")).to_contain_text("Build #1")
    shot(page, "31-canary-split")

    # Move the split: the confirmation says what will happen.
    traffic.get_by_role("button", name="Set the split…").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("#split-percent").fill("50")
    expect(dialog.get_by_test_id("split-what")).to_have_text(
        "Build #1 will answer 50 % and build #2 50 % of the requests (now 70 % · 30 %)."
    )
    dialog.get_by_role("button", name="Set the split").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("split-label")).to_have_text("#1 50 % · #2 50 %")
    expect(page.get_by_test_id("header-split")).to_have_text("#1 50 % · #2 50 %")

    # Promote: an answer the server refuses shows in the dialog, as every action's error does.
    traffic.get_by_role("button", name="Promote #2…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_test_id("promote-what")).to_contain_text(
        "Build #2 takes all the traffic and becomes the primary; build #1"
    )
    dialog.locator("#promote-replay").fill("999")
    dialog.get_by_role("button", name="Promote").click()
    expect(dialog.get_by_role("alert")).to_contain_text("replay.mismatch")
    shot(page, "32-promote-refused")
    dialog.locator("#promote-replay").fill("")
    dialog.get_by_role("button", name="Promote").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("split")).to_have_count(0)
    expect(traffic).to_contain_text("Build #2 answers every request")
    expect(page.locator("section[data-role=primary]")).to_contain_text("Build #2")
    expect(page.get_by_role("status")).to_contain_text("Promoted: build #2 is the primary")
    assert site.current_build("adder") == 2
    assert predict(site, 10) == {"2"}
    shot(page, "33-promoted")

    # A shadow of build 1: refused first in words (build 1 does not take `c`, which callers of
    # build 2 may send), then allowed; callers see build 2 only; Abort ends it.
    traffic.get_by_role("button", name="Shadow…").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("#shadow-build").select_option("1")
    expect(dialog).to_contain_text("gets a copy of each request after build #2")
    dialog.get_by_role("button", name="Start the shadow").click()
    expect(dialog.get_by_role("alert")).to_contain_text("schema.breaking")
    dialog.locator("#shadow-allow-breaking").check()
    dialog.get_by_role("button", name="Start the shadow").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("split")).to_have_attribute("data-mode", "shadow")
    expect(page.get_by_test_id("split-label")).to_have_text(
        "#2 100 % · shadow #1 gets a copy of 100 %"
    )
    expect(traffic.get_by_role("button", name="Promote #1…")).to_be_enabled(timeout=90_000)
    assert predict(site, 10) == {"2"}
    expect(page.get_by_test_id("shadow-counts")).to_contain_text(
        re.compile(r"[1-9]\d* recorded"), timeout=20_000
    )
    shot(page, "34-shadow")
    traffic.get_by_role("button", name="Abort…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_test_id("abort-what")).to_have_text(
        re.compile(r"Build #1 takes no more requests.*build #2\s+answers every request")
    )
    dialog.get_by_role("button", name="Abort").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("split")).to_have_count(0)
    expect(traffic).to_contain_text("Build #2 answers every request")
    assert site.current_build("adder") == 2

    page.get_by_role("link", name="Deployments").click()
    expect(page.locator("section.current")).to_contain_text("Build #2")
    timeline = page.get_by_role("list", name="Deployment history").locator("li")
    expect(timeline.first).to_have_attribute("data-build", "1")  # the aborted shadow
    expect(timeline.first).to_have_attribute("data-status", "stopped")
    serving = page.locator("li[data-status=deployed]")
    expect(serving).to_have_count(1)
    expect(serving).to_have_attribute("data-build", "2")  # the promoted canary
    expect(page).to_have_url(re.compile(r"/models/adder/deployments$"))


BROKEN_ADDER = (
    "def predict(a: float, b: float = 0.0, c: int = 0) -> float:\n"
    "    raise ValueError('broken on purpose')\n"
)


def test_a_viewer_sees_no_actions_and_a_tripped_guard_shows_why(page, site):
    """A viewer's token reads the Traffic and Deployments tabs without a button it would be
    refused; a deployer's sees them, and a canary whose every answer fails trips its guard: the
    Traffic tab says so, why and when."""
    with site.api() as c:
        tokens = {
            role: c.post("/api/v1/tokens", json={"name": f"web-{role}", "role": role}).json()[
                "token"
            ]
            for role in ("viewer", "deployer")
        }
    broken = site.start_build("adder", {"predict.py": BROKEN_ADDER}, message="always fails")
    with site.api() as c:
        assert wait_build(c, "adder", broken)["status"] == "built"

    page.goto(site.url + "/models/adder/traffic")
    sign_in(page, tokens["viewer"])
    traffic = page.get_by_role("region", name="Traffic")
    expect(traffic).to_contain_text("answers every request")
    for name in ("Canary…", "Shadow…"):
        expect(traffic.get_by_role("button", name=name)).to_have_count(0)
    page.get_by_role("link", name="Deployments").click()
    expect(page.locator("section.current")).to_contain_text("Build #")
    for name in ("Deploy a build…", "Scale…", "Restart…", "Roll back…", "Stop…"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    page.get_by_role("button", name="Sign out").click()

    sign_in(page, tokens["deployer"])
    page.get_by_role("button", name="Deploy a build…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("More settings").click()
    expect(dialog.locator("#deploy-require-replay")).not_to_be_checked()
    expect(dialog).to_contain_text("require_replay")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()

    serving = site.current_build("adder")
    with site.api() as c:
        made = c.post(
            "/api/v1/models/adder/deployments",
            json={
                "build": broken,
                "canary_percent": 50,
                "guard": {"max_error_rate": 0.05, "window_s": 30},
                "allow_breaking": True,
            },
        )
        assert made.status_code == 202, made.text
        cand = made.json()["id"]
        deadline = time.monotonic() + 90
        while not any(
            e["kind"] == "candidate.ready"
            for e in c.get(f"/api/v1/models/adder/deployments/{cand}").json()["events"]
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        failed = 0
        while True:  # requests until the guard judged the failures
            found = c.get(f"/api/v1/models/adder/deployments/{cand}").json()
            if any(e["kind"] == "guard.tripped" for e in found["events"]):
                break
            assert time.monotonic() < deadline, found
            for a in range(10):
                answer = c.post(
                    "/models/adder/predict",
                    json={"a": a, "b": 1},
                    headers={"Authorization": f"Bearer {site.keys['adder']}"},
                )
                failed += answer.status_code == 500
            time.sleep(0.2)
        assert failed > 0

    page.get_by_role("link", name="Traffic").click()
    banner = page.get_by_test_id("guard-tripped")
    expect(banner).to_contain_text("The guard tripped", timeout=20_000)
    expect(banner).to_contain_text("broke max_error_rate 0.05")
    expect(banner).to_contain_text(f"Build #{broken} gets no requests (it had 50 %)")
    expect(banner.locator("time")).to_have_count(1)
    expect(page.get_by_test_id("split-label")).to_contain_text(f"#{broken} 0 %")
    expect(
        page.get_by_role("region", name="Traffic").get_by_role("button", name="Abort…")
    ).to_be_visible()
    shot(page, "35-guard-tripped")

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, tokens["viewer"])
    expect(page.get_by_test_id("guard-tripped")).to_contain_text("broke max_error_rate 0.05")
    expect(page.get_by_role("region", name="Traffic").get_by_role("button")).to_have_count(0)
    page.get_by_role("button", name="Sign out").click()
    with site.api() as c:
        assert c.post("/api/v1/models/adder/abort").status_code == 200
    assert site.current_build("adder") == serving
