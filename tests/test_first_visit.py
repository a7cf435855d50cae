"""A new user's first visit: every tab they can see opens on a fresh data dir without an error toast.

The app is the real one (the demo model, as a new install has it), in a real browser, with and without logins.
"""

from __future__ import annotations

import time

import pytest

from mlx_gradio.controller.access import Access
from tests.test_browser import ARTIFACTS

ERRORS = ".toast-body.error"
# What each tab shows once its own load or first refresh has come back (or an error toast, if it failed).
SHOWN = {
    "Chat": "document.querySelector('#model-status')?.innerText.trim()",
    "Models": "document.querySelector('#downloads')?.innerText.includes('No downloads yet') "
              "&& document.querySelector('#local-models')?.innerText.includes('SmolLM2')",
    "Servers": "document.querySelector('#servers-live')?.innerText.includes('No server runs') "
               "&& document.querySelector('#server-name input')?.value",
}


def sign_in(page, user: str, password: str) -> None:
    page.wait_for_selector("input[type=password]", timeout=30_000)
    page.locator("input[type=text]").first.fill(user)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name="Login").click()


def shown_or_failed(page, tab: str, who: str) -> None:
    """Wait until the tab shows what it loaded, or an error toast; a screenshot of the page if neither comes."""
    try:
        page.wait_for_function(f"({SHOWN[tab]}) || document.querySelector('{ERRORS}')", timeout=60_000)
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"first-visit-{who.replace(' ', '-')}-{tab}.png"), full_page=True)
        raise


def count_calls(obj: object, name: str) -> list:
    """Record what each call of `obj.name` returns (the real method still runs)."""
    real = getattr(obj, name)
    results: list = []

    def recorded(*args, **kwargs):
        result = real(*args, **kwargs)
        results.append(result)
        return result

    setattr(obj, name, recorded)
    return results


def toasts(page) -> list[str]:
    return [t.inner_text() for t in page.locator(ERRORS).all()]


@pytest.mark.parametrize("who", ["no logins", "owner", "guest"])
def test_every_tab_opens_without_an_error_on_a_fresh_data_dir(start_app, browser_page, tmp_path, who):
    access = None if who == "no logins" else Access(owners={"ann": "owner-pw"}, guests={"gus": "guest-pw"})
    app = start_app(data_dir=tmp_path / "fresh", access=access, demo=True)
    page = browser_page
    page.goto(app.url)
    if who == "owner":
        sign_in(page, "ann", "owner-pw")
    elif who == "guest":
        sign_in(page, "gus", "guest-pw")
    page.wait_for_selector("#chatbot", timeout=60_000)
    tabs = ["Chat"] if who == "guest" else ["Chat", "Models", "Servers"]
    if who == "guest":
        assert page.get_by_role("tab", name="Servers").count() == 0
    for tab in tabs:
        page.get_by_role("tab", name=tab).click()
        shown_or_failed(page, tab, who)
        assert not toasts(page), f"{tab}: {toasts(page)}"
    if "Servers" in tabs:
        # The live view refreshes every second (and asks for the picked profile's log each time): two more
        # refreshes come and go, still without an error.
        asked = count_calls(app.controller.servers, "log_tail")
        deadline = time.monotonic() + 60
        start = len(asked)
        while len(asked) < start + 3 and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert len(asked) >= start + 3 and all(result == "" for result in asked)
        assert not toasts(page)
        picker = page.locator("#server-profile input").input_value()
        assert picker and "not saved" in picker  # the profile being filled in is named, not a blank picker
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"first-visit-{who.replace(' ', '-')}.png"), full_page=True)
    assert not toasts(page)
