"""Driving Debian's Chromium with Python Playwright: launch, sign in, screenshots, console watch."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling Google on a closed network.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
VIEWPORT = {"width": 1366, "height": 860}  # a laptop screen
SHOTS = Path(__file__).resolve().parents[3] / "test-output" / "screenshots"


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None. In CI a missing Chromium is a failure."""
    if Path(CHROMIUM).exists():
        return None
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: scripts/install-test-deps installs it")
    return f"{CHROMIUM} is not installed (apt-get install -y chromium)"


def shot(page, name: str) -> Path:
    """A full-page screenshot under test-output/screenshots/ (git-ignored)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, token: str, *, keyboard: bool = False) -> None:
    """Paste the token in the sign-in form shown on whatever page is open, and wait for the app."""
    field = page.locator("#token")
    field.wait_for()
    if keyboard:
        field.focus()
        page.keyboard.type(token)
        page.keyboard.press("Enter")
    else:
        field.fill(token)
        page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


class Console:
    """What the page reported: uncaught errors and Content-Security-Policy violations."""

    def __init__(self, page):
        self.problems: list[str] = []
        page.on("pageerror", lambda err: self.problems.append(f"uncaught: {err}"))
        page.on("console", self._console)

    def _console(self, message) -> None:
        text = message.text
        if "Content Security Policy" in text or "Refused to" in text:
            self.problems.append(f"csp: {text}")
