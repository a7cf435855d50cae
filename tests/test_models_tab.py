"""The Models tab in a real browser against the Hub on 127.0.0.1: search, details, fit; owners only."""

from __future__ import annotations

import time

import gradio as gr
import pytest

from mlx_gradio.controller.access import Access
from mlx_gradio.hub.search import HubService
from tests.test_browser import ARTIFACTS


def test_search_shows_results_and_a_model_shows_whether_it_fits(start_app, local_hub, browser_page):
    app = start_app(hub=HubService(local_hub.url))
    page = browser_page
    page.goto(app.url)
    page.get_by_role("tab", name="Models").click()
    page.locator("#hub-query textarea, #hub-query input").first.fill("smol")
    page.locator("#hub-query textarea, #hub-query input").first.press("Enter")
    page.wait_for_function("document.querySelector('#hub-results')?.innerText.includes('SmolLM2-135M-Instruct-4bit')",
                           timeout=30_000)
    table = page.locator("#hub-results").inner_text()
    assert "5,200" in table and "4-bit" in table and "fits" in table and "tiny-qwen2-vl" not in table
    page.locator("#hub-results").get_by_test_id("cell-0-0").click()
    page.wait_for_function("document.querySelector('#hub-fit')?.innerText.includes('fits')", timeout=30_000)
    details = page.locator("#hub-details").inner_text()
    assert "8,192 tokens" in details and "model.safetensors" in details and "LlamaForCausalLM" in details
    fit = page.locator("#hub-fit").inner_text()
    assert "weights +" in fit and "at 8k tokens" in fit and "Up to 8,192 tokens" in fit
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)


def test_the_models_tab_is_for_owners_only(start_app, local_hub, browser_page):
    app = start_app(access=Access(owners={"ann": "pw"}, guests={"gus": "pw"}), hub=HubService(local_hub.url))
    hub = app.controller.hub
    gus = gr.Request(username="gus", session_hash="g")
    with pytest.raises(gr.Error, match="Only the owner"):
        hub.search("smol", "", "any", 0, "downloads", 0, gus)
    with pytest.raises(gr.Error, match="Only the owner"):
        hub.details("mlx-community/SmolLM2-135M-Instruct-4bit", 0, gus)
    ann = gr.Request(username="ann", session_hash="a")
    assert hub.search("smol", "", "any", 0, "downloads", 0, ann).page.models
    assert app.controller.is_owner(ann) and not app.controller.is_owner(gus)  # what shows the tab
    page = browser_page
    page.goto(app.url)
    page.locator("input[type=text]").first.fill("gus")
    page.locator("input[type=password]").fill("pw")
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#chatbot", timeout=30_000)
    page.wait_for_function("document.querySelector('#account')?.innerText.includes('gus')", timeout=30_000)
    assert page.get_by_role("tab", name="Models").count() == 0 and page.get_by_role("tab", name="Servers").count() == 0


def progress_value(page) -> int | None:
    """The download's progress bar value (0-1000) on screen, if there is one."""
    bar = page.locator("#downloads progress")
    return int(bar.first.get_attribute("value")) if bar.count() else None


def test_download_with_a_moving_progress_bar_then_chat_with_it_then_delete_it(start_app, local_hub, browser_page,
                                                                               tmp_path):
    """The demo model's 119 MB: a bar that moves in steps, and a download whose answer proves it whole."""
    from tests.test_browser import wait_for_reply

    app = start_app(hub=HubService(local_hub.url), cache_dir=tmp_path / "hf")
    local_hub.faults.bytes_per_second = 30e6  # ~4 s, in 12 steps of 10 MB: long enough to watch the bar move
    page = browser_page
    page.goto(app.url)
    page.get_by_role("tab", name="Models").click()
    page.locator("#hub-query textarea, #hub-query input").first.fill("smol")
    page.locator("#hub-query textarea, #hub-query input").first.press("Enter")
    page.wait_for_function("document.querySelector('#hub-results')?.innerText.includes('SmolLM2')", timeout=30_000)
    page.locator("#hub-results").get_by_test_id("cell-0-0").click()
    page.wait_for_selector("#hub-download", state="visible", timeout=30_000)
    assert "119 MB" in page.locator("#hub-download").inner_text()
    page.locator("#hub-download").click()
    values = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "Done" not in page.locator("#downloads").inner_text():
        if (value := progress_value(page)) is not None and (not values or values[-1] != value):
            values.append(value)
        page.wait_for_timeout(200)
    local_hub.faults.bytes_per_second = 0
    assert "Done" in page.locator("#downloads").inner_text()
    assert len([v for v in values if 0 < v < 1000]) >= 2 and values == sorted(values)  # it moved, forward only
    # The model is in the Chat tab's picker without a reload, and on the list of this machine.
    page.wait_for_function("document.querySelector('#local-models')?.innerText.includes('SmolLM2-135M-Instruct-4bit')",
                           timeout=30_000)
    page.wait_for_selector("#hub-use", state="visible", timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "models-download.png"), full_page=True)
    page.locator("#hub-use").click()
    page.wait_for_selector("#chatbot", state="visible", timeout=30_000)
    page.wait_for_function(
        "document.querySelector('#model-picker input')?.value.includes('SmolLM2-135M-Instruct-4bit')", timeout=30_000)
    page.wait_for_function("document.querySelector('#model-status').innerText.includes('loaded')", timeout=120_000)
    box = page.locator("#chat-input textarea")
    box.fill("What is the capital of France?")
    box.press("Enter")
    wait_for_reply(page, "Paris")
    # Back on the Models tab: delete it, after the question that says what it frees.
    page.get_by_role("tab", name="Models").click()
    page.locator("#local-models").get_by_role("gridcell", name="mlx-community/SmolLM2-135M-Instruct-4bit",
                                               exact=True).click()
    page.locator("#local-delete").click()
    page.wait_for_function("document.querySelector('#delete-question')?.innerText.includes('frees 119 MB')",
                           timeout=30_000)
    page.locator("#delete-confirm").click()
    page.wait_for_function(
        "!document.querySelector('#local-models')?.innerText.includes('SmolLM2-135M-Instruct-4bit')", timeout=30_000)
    assert not (tmp_path / "hf" / "models--mlx-community--SmolLM2-135M-Instruct-4bit").exists()


def test_a_download_that_ends_before_the_first_progress_tick_still_reaches_the_page(make_controller, local_hub,
                                                                                    tmp_path):
    """The tab's handlers, stepped by hand: the download ends before the timer's first tick (a small model, a
    fast line, files already in the cache); that tick still brings the model to the details, the list of this
    machine and the chat's picker."""
    from mlx_gradio.ui.models_tab import ModelsEvents
    from tests.test_downloads import finished, wait_for

    repo_id = "mlx-community/tiny-random-llama"
    controller = make_controller(hub=HubService(local_hub.url), cache_dir=tmp_path / "hf")
    events = ModelsEvents(controller)
    ann = gr.Request(session_hash="a")
    *_, shown, download, use = events.show(ann, repo_id, 0)
    assert download["value"].startswith("Download (") and not use["visible"]
    *_, timer, active = events.download(ann, shown)
    assert timer.active and active == [repo_id]
    assert wait_for(controller.downloads.downloads, repo_id, finished).state == "done"
    _, local, keys, picker, _, _, _, download, use, timer, active = events.tick(ann, active, shown, 0)
    assert f"hf:{repo_id}" in keys and any(repo_id in str(row) for row in local)
    assert any(repo_id == label.split(" · ")[0] for label, _ in picker["choices"])
    assert download["value"].startswith("Download again") and use["visible"]
    assert not timer.active and active == []
