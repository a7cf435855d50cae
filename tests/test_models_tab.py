"""The Models tab in a real browser against the Hub on 127.0.0.1: search, details, fit; owners only."""

from __future__ import annotations

import gradio as gr
import pytest

from mlx_gradio.controller.access import Access
from mlx_gradio.hub import HubService
from tests.test_browser import ARTIFACTS, browser_page  # noqa: F401 - the browser fixture


def test_search_shows_results_and_a_model_shows_whether_it_fits(start_app, local_hub, browser_page):  # noqa: F811
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
    page.get_by_test_id("cell-0-0").click()
    page.wait_for_function("document.querySelector('#hub-fit')?.innerText.includes('fits')", timeout=30_000)
    details = page.locator("#hub-details").inner_text()
    assert "8,192 tokens" in details and "model.safetensors" in details and "LlamaForCausalLM" in details
    fit = page.locator("#hub-fit").inner_text()
    assert "weights +" in fit and "at 8k tokens" in fit and "Up to 8,192 tokens" in fit
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)


def test_the_models_tab_is_for_owners_only(start_app, local_hub, browser_page):  # noqa: F811
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
    assert page.get_by_role("tab", name="Models").count() == 0
