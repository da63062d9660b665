"""The web UI in a real Chromium against a real server: sign in, browse, test, deploy, roll back."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.browser import shot, sign_in
from tests.e2e.browser.fixtures import ECHO as ECHO_SOURCE
from tests.e2e.browser.fixtures import browser_fixture, page_fixture, site_fixture  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def open_signed_in(page, site, path: str = "/") -> None:
    page.goto(site.url + path)
    sign_in(page, site.token)


def test_a_bad_token_is_refused_in_words(page, site):
    page.goto(site.url + "/")
    shot(page, "01-sign-in")
    page.locator("#token").fill("mp_tok_not-a-real-token")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Sign-in failed")
    expect(alert).to_contain_text("unknown, expired or revoked")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    shot(page, "02-sign-in-bad-token")


def test_sign_in_with_the_keyboard_and_see_the_models(page, site):
    page.goto(site.url + "/")
    sign_in(page, site.token, keyboard=True)
    adder = page.locator("tr[data-model=adder]")
    echo = page.locator("tr[data-model=echo]")
    expect(adder).to_contain_text("build #1")
    expect(adder).to_contain_text("Adds numbers")
    expect(adder.locator(".replicas")).to_have_text("1 / 1")
    expect(adder.locator("[data-status]")).to_have_text("deployed")
    expect(echo).to_contain_text("build #1")
    expect(page.get_by_role("link", name="Tokens")).to_be_visible()  # an admin token
    shot(page, "03-models")


def test_a_build_shows_its_schema_files_dependencies_log_and_diff(page, site):
    open_signed_in(page, site)
    page.get_by_role("link", name="adder", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile("adder"))).to_be_visible()
    expect(page.get_by_test_id("snippet")).to_contain_text('{"a":1,"b":2}')
    builds = page.get_by_role("table", name="Builds")
    expect(builds.locator("tr[data-build]")).to_have_count(2)
    expect(builds.locator("tr[data-build='1']")).to_contain_text("serving")
    shot(page, "04-model-builds")

    builds.get_by_role("link", name="#2").click()
    expect(page).to_have_url(re.compile(r"/models/adder/builds/2$"))
    schema = page.get_by_role("table", name="Input schema")
    for field in ("a", "b", "c"):
        expect(schema.get_by_role("cell", name=field, exact=True)).to_be_visible()
    expect(schema).to_contain_text("integer")
    expect(page.get_by_role("region", name="Example input")).to_contain_text('"c": 3')
    shot(page, "05-build-overview")

    page.get_by_role("link", name="Files", exact=True).click()
    files = page.get_by_role("table", name="Files")
    for path in ("predict.py", "requirements.txt", "notes.txt"):
        expect(files.get_by_role("button", name=f"Show {path}")).to_be_visible()
    files.get_by_role("button", name="Show predict.py").click()
    expect(page.get_by_role("region", name="File content")).to_contain_text("def predict(a: float")
    shot(page, "06-build-files")

    page.get_by_role("link", name="Dependencies").click()
    deps = page.get_by_role("table", name="Dependencies")
    expect(deps.get_by_role("row", name=re.compile("tinypkg"))).to_contain_text("1.0")
    shot(page, "07-build-dependencies")

    page.get_by_role("link", name="Log", exact=True).click()
    expect(page.get_by_role("region", name="Build log")).to_contain_text("tinypkg")
    shot(page, "08-build-log")

    page.get_by_role("link", name="Diff").click()
    expect(page).to_have_url(re.compile(r"/models/adder/builds/2/diff/1$"))
    expect(page.get_by_role("table", name="Changed files")).to_contain_text("notes.txt")
    expect(page.get_by_role("table", name="Changed dependencies")).to_contain_text("tinypkg")
    expect(page.get_by_text(re.compile(r"added c"))).to_be_visible()
    shot(page, "09-build-diff")


def test_the_test_form_calls_the_model(page, site):
    open_signed_in(page, site, "/models/adder/test")
    expect(page.locator("#arg-a")).to_have_value("1")
    expect(page.locator("#arg-b")).to_have_value("2")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_test_id("status")).to_contain_text("200")
    expect(page.get_by_test_id("answer")).to_have_text("3")
    expect(page.get_by_test_id("answer-build")).to_have_text("#1")
    expect(page.get_by_test_id("answer-replica")).to_have_text(
        re.compile(r"^adder-1-1-[0-9a-f]{4}$")
    )
    shot(page, "10-test-answer")

    page.locator("#arg-a").fill("abc")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_text("Not a number.")).to_be_visible()

    page.get_by_role("button", name="JSON").click()
    page.locator("#json-body").fill('{"a": "x"}')
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_test_id("status")).to_contain_text("422")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Expected `float`, got `str`")
    expect(alert).to_contain_text("request.invalid")
    shot(page, "11-test-invalid")


def test_a_dict_function_gets_the_json_editor(page, site):
    open_signed_in(page, site, "/models/echo/test")
    expect(page.locator("#json-body")).to_have_value(re.compile(r'"text": "hello"'))
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_test_id("answer")).to_contain_text('"echo"')


def test_deploy_another_build_and_roll_back_with_clicks(page, site):
    open_signed_in(page, site, "/models/adder/deployments")
    now = page.locator("section.current")
    timeline = page.get_by_role("list", name="Deployment history").locator("li")
    expect(now).to_contain_text("Build #1")
    expect(timeline).to_have_count(1)

    page.get_by_role("button", name="Deploy a build…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator("#deploy-build")).to_have_value("2")
    expect(dialog.locator("#deploy-timeout")).to_have_value("12")  # how it is served now
    expect(dialog.get_by_test_id("schema-compatible")).to_contain_text("new optional field 'c'")
    dialog.get_by_role("button", name="Deploy build #2").click()
    expect(dialog).to_be_hidden()
    expect(timeline).to_have_count(2)
    expect(timeline.first).to_have_attribute("data-status", "deployed", timeout=60_000)
    expect(timeline.first).to_have_attribute("data-build", "2")
    expect(now).to_contain_text("Build #2")
    expect(timeline.nth(1)).to_have_attribute("data-status", "stopped")
    expect(timeline.nth(1)).to_contain_text("replaced by deployment")
    current = site.current("adder")
    assert (current["build"], current["timeout_s"], current["env_keys"]) == (2, 12, ["GREETING"])
    shot(page, "12-deployments-deployed-2")

    page.get_by_role("button", name="Deploy a build…").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("#deploy-build").select_option("1")
    expect(dialog.get_by_test_id("schema-breaking")).to_contain_text("'c'")
    confirm = dialog.get_by_role("button", name="Deploy build #1")
    expect(confirm).to_be_disabled()
    dialog.locator("#deploy-allow-breaking").check()
    expect(confirm).to_be_enabled()
    shot(page, "12b-deploy-breaking-schema")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()

    page.get_by_role("button", name="Roll back…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("the build that served before (#1)")
    dialog.get_by_role("button", name="Roll back").click()
    # Build #1 does not take `c`, which callers of #2 may send now: refused until allowed.
    expect(dialog.get_by_role("alert")).to_contain_text("'c'")
    expect(timeline).to_have_count(2)
    dialog.locator("#rollback-allow-breaking").check()
    dialog.get_by_role("button", name="Roll back").click()
    expect(timeline).to_have_count(3)
    expect(timeline.first).to_have_attribute("data-build", "1")
    expect(timeline.first).to_have_attribute("data-status", "deployed", timeout=60_000)
    expect(timeline.first).to_contain_text("rollback from #2 to #1")
    expect(now).to_contain_text("Build #1")
    expect(page.get_by_role("status").filter(has_text="Done")).to_contain_text(
        "Done: build #1 is deployed."
    )
    assert site.current_build("adder") == 1
    shot(page, "13-deployments-rolled-back")


def test_the_deploy_dialog_offers_every_setting_and_captures_show_in_monitoring(page, site):
    open_signed_in(page, site, "/models/adder/deployments")
    serving = site.current("adder")
    page.get_by_role("button", name="Deploy a build…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("More settings").click()
    # Every setting the API takes, starting from how the model is served now.
    expect(dialog.locator("#deploy-timeout")).to_have_value(f"{serving['timeout_s']:g}")
    expect(dialog.locator("#deploy-memory")).to_have_value("")
    expect(dialog.locator("#deploy-queue")).to_have_value("30")
    expect(dialog.locator("#deploy-body")).to_have_value("5")
    expect(dialog.locator("#deploy-capture")).to_have_value("0")
    expect(dialog.locator("#deploy-boot")).to_have_value("300")
    expect(dialog.locator("#deploy-network")).to_be_checked()
    expect(dialog.locator("#deploy-rate")).to_have_value("")
    expect(dialog).to_contain_text("blank keeps GREETING")
    dialog.locator("#deploy-build").select_option(str(serving["build"]))
    dialog.locator("#deploy-memory").fill("512")
    dialog.locator("#deploy-queue").fill("7")
    dialog.locator("#deploy-capture").fill("100")
    dialog.locator("#deploy-rate").fill("1000")
    shot(page, "13b-deploy-dialog-every-setting")
    dialog.get_by_role("button", name=f"Deploy build #{serving['build']}").click()
    expect(dialog).to_be_hidden()
    timeline = page.get_by_role("list", name="Deployment history").locator("li")
    expect(timeline.first).to_have_attribute("data-status", "deployed", timeout=60_000)
    now = site.current("adder")
    assert now["id"] != serving["id"]
    assert (now["memory_mb"], now["queue_timeout_s"], now["capture_percent"]) == (512, 7, 100)
    assert (now["timeout_s"], now["env_keys"]) == (serving["timeout_s"], ["GREETING"])
    assert site.api().get("/api/v1/models/adder").json()["rate_limit_per_s"] == 1000

    for a in range(3):
        answer = httpx.post(
            f"{site.url}/models/adder/predict",
            json={"a": a, "b": 1000},
            headers={"Authorization": f"Bearer {site.keys['adder']}"},
        )
        assert answer.status_code == 200, answer.text
    page.get_by_role("link", name="Monitoring").click()
    captures = page.get_by_role("table", name="Captures")
    deadline = time.monotonic() + 40
    while not captures.count() and time.monotonic() < deadline:
        page.get_by_role("region", name="Captured requests").get_by_role(
            "button", name="Refresh"
        ).click()
        page.wait_for_timeout(1000)
    expect(captures.locator("tr[data-capture]").first).to_contain_text('"b": 1000')
    # The charts include CPU, memory and bytes; no y-axis label is cut.
    expect(page.get_by_text("Request and response bytes")).to_be_visible(timeout=40_000)
    expect(page.get_by_text("CPU (100% = one core)")).to_be_visible()
    page.get_by_role("button", name="14d").click()
    expect(page).to_have_url(re.compile(r"window=14d"))
    expect(page.get_by_text("Memory of the replicas")).to_be_visible(timeout=20_000)
    plots = page.locator(".plot[data-y-axis-px]")
    expect(plots.first).to_be_visible()
    for i in range(plots.count()):
        label = int(plots.nth(i).get_attribute("data-y-label-px"))
        room = int(plots.nth(i).get_attribute("data-y-axis-px"))
        assert label > 0 and label + 15 <= room, (i, label, room)
    shot(page, "13c-monitoring-captures")


def test_a_deep_link_survives_sign_in_and_reload(page, site):
    page.goto(site.url + "/models/adder/builds/2/files")
    sign_in(page, site.token)
    expect(page).to_have_url(site.url + "/models/adder/builds/2/files")
    files = page.get_by_role("table", name="Files")
    expect(files).to_contain_text("notes.txt")
    page.reload()
    expect(page.get_by_role("table", name="Files")).to_contain_text("notes.txt")
    expect(page.locator("#token")).to_have_count(0)
    shot(page, "14-deep-link-reloaded")

    page.goto(site.url + "/models/adder/builds/99")
    expect(page.get_by_role("alert")).to_contain_text("Model 'adder' has no build #99.")
    shot(page, "15-missing-build")
    page.goto(site.url + "/models/nosuch")
    expect(page.get_by_role("alert")).to_contain_text("model.not_found")


def test_replicas_monitoring_settings(page, site):
    open_signed_in(page, site, "/models/adder/replicas")
    row = page.locator("tr[data-replica]").first
    expect(row.locator("[data-status]")).to_have_text("ready")
    row.get_by_role("button", name="stdout").click()
    expect(page.get_by_role("region", name="Replica log")).to_contain_text("adder loading")
    shot(page, "16-replicas")

    page.get_by_role("link", name="Monitoring").click()
    expect(page.get_by_role("group", name="Window")).to_be_visible()
    charts = re.compile("No metrics series|Requests per second|No predictions")
    expect(page.get_by_text(charts).first).to_be_visible()
    shot(page, "17-monitoring")

    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("button", name="Delete adder…")).to_be_disabled()
    page.get_by_role("button", name="Rotate the access key…").click()
    page.get_by_role("dialog").get_by_role("button", name="Rotate").click()
    key = page.get_by_test_id("new-key").inner_text()
    assert key.startswith("mp_key_")
    expect(page.get_by_test_id("snippet")).to_contain_text(key)
    answer = httpx.post(
        f"{site.url}/models/adder/predict",
        json={"a": 2},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 200 and answer.json() == 2.0
    old = httpx.post(
        f"{site.url}/models/adder/predict",
        json={"a": 2},
        headers={"Authorization": f"Bearer {site.keys['adder']}"},
    )
    assert old.status_code == 401
    site.keys["adder"] = key
    shot(page, "18-settings-rotated")


def test_tokens_audit_and_sign_out(page, site):
    open_signed_in(page, site, "/tokens")
    page.locator("#token-name").fill("ci-viewer")
    page.locator("#token-role").select_option("viewer")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_test_id("new-token").inner_text()
    assert secret.startswith("mp_tok_")
    expect(page.get_by_role("table", name="Tokens")).to_contain_text("ci-viewer")
    shot(page, "19-tokens")

    page.get_by_role("link", name="Audit log").click()
    log = page.get_by_role("table", name="Audit log")
    expect(log).to_contain_text("deployment.create")
    expect(log).to_contain_text("token.create")
    page.locator("#audit-model").fill("echo")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/audit\?model=echo$"))
    expect(log.get_by_role("link", name="adder")).to_have_count(0)
    shot(page, "20-audit")

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#token")).to_be_visible()
    # a viewer browses but sees no Tokens page and no button that changes what serves (its
    # role from GET /api/v1/whoami, kept across a reload)
    sign_in(page, secret)
    expect(page.get_by_role("link", name="Tokens")).to_have_count(0)
    page.goto(site.url + "/models/adder/deployments")
    expect(page.locator("section.current")).to_contain_text("Build #")
    for name in ("Deploy a build…", "Scale…", "Restart…", "Roll back…", "Stop…"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Access key")).to_be_visible()
    expect(page.get_by_role("button", name="Rotate the access key…")).to_have_count(0)
    shot(page, "21-viewer-no-actions")


def test_the_api_docs_open_from_the_ui_with_no_network(page, site):
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(site.url) else outside.append(r.url))
    open_signed_in(page, site)
    page.get_by_role("link", name="API docs").click()
    page.wait_for_url(site.url + "/schema")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("modelport management API")
    expect(page.locator(".opblock-tag-section").first).to_be_visible()
    assert outside == []  # Swagger UI's script and styles came from the server itself
    shot(page, "25-api-docs")


def test_the_spa_is_served_with_safe_headers(site):
    with httpx.Client(base_url=site.url) as c:
        index = c.get("/models/adder/builds/2")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        csp = index.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert index.headers["x-content-type-options"] == "nosniff"
        assert index.headers["referrer-policy"] == "no-referrer"
        assert index.headers["cache-control"] == "no-cache"
        assert "<script" in index.text and "<script>" not in index.text  # no inline script
        asset = re.search(r'src="(/assets/[^"]+\.js)"', index.text).group(1)
        served = c.get(asset)
        assert served.status_code == 200
        assert "immutable" in served.headers["cache-control"]
        assert served.headers["content-type"].startswith("text/javascript")
        assert c.get("/assets/missing.js").status_code == 404
        api = c.get("/api/v1/nope")
        assert api.status_code == 404 and api.json()["error"]["code"] == "route.not_found"
        assert c.get("/nowhere").status_code == 404
        assert c.get("/models/adder/predict").status_code == 405
        assert c.get("/api/v1/health").json()["status"] == "ok"


def test_the_log_of_a_running_build_streams_live(page, site):
    slow = 'import time\n\nprint("warming up", flush=True)\ntime.sleep(4)\n\n\n' + ECHO_SOURCE
    number = site.start_build("echo", {"predict.py": slow}, message="slow import")
    open_signed_in(page, site, f"/models/echo/builds/{number}/log")
    log = page.get_by_role("region", name="Build log")
    expect(log.get_by_role("status")).to_have_text("live")
    expect(log).to_contain_text("checking the function")
    shot(page, "22-build-log-live")
    expect(log).to_contain_text("Built sha256:", timeout=60_000)
    expect(log.get_by_role("status")).to_have_count(0)
    expect(page.locator("h2 [data-status]")).to_have_text("built")
