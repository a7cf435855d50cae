"""The Servers tab in a real browser: one click starts the chat's model as a server, it becomes ready, Stop."""

from __future__ import annotations

import psutil

from mlx_gradio.serving.profiles import port_holder
from tests.test_browser import ARTIFACTS, ask_through_the_server, short_replies


def test_start_watch_call_and_stop_a_server_from_the_tab(start_app, browser_page):
    from openai import OpenAI

    app = start_app()  # the tiny llama: the words through a server are checked in test_servers.py
    short_replies(app)
    page = browser_page
    page.goto(app.url)
    page.get_by_role("tab", name="Servers").click()
    # The quick path: the chat's model and a free port are filled in already.
    page.wait_for_function("document.querySelector('#server-name input')?.value.includes('tiny-random-llama')",
                           timeout=30_000)
    port = int(page.locator("#server-port input").input_value())
    assert port >= 8080 and port_holder("127.0.0.1", port) is None
    page.locator("#server-start").click()
    page.wait_for_function("document.querySelector('#servers-live')?.innerText.includes('starting')", timeout=30_000)
    page.wait_for_function("document.querySelector('#servers-live')?.innerText.includes('● ready')", timeout=240_000)
    live = page.locator("#servers-live").inner_text()
    assert f"http://127.0.0.1:{port}/v1" in live and "memory" in live and "pid" in live
    snippets = page.locator("#server-snippets").inner_text()
    assert f"curl http://127.0.0.1:{port}/v1/chat/completions" in snippets and "OpenAI(base_url=" in snippets
    page.wait_for_function("document.querySelector('#server-log')?.innerText.includes('mlx_lm')", timeout=30_000)
    # Another program calls it.
    reply = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x").chat.completions.create(
        model="default_model", max_tokens=10, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert reply.choices[0].message.content.strip() and reply.usage.completion_tokens == 10
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "servers.png"), full_page=True)
    # The ready server is in the Chat tab's model list without a reload; the chat answers through it.
    ask_through_the_server(page, "")
    assert "tiny-random-llama" in page.locator("#reply-stats-line").inner_text()  # named after the server
    page.get_by_role("tab", name="Servers").click()
    [status] = app.controller.servers.servers.list()
    page.locator("#server-stop").click()
    page.wait_for_function("document.querySelector('#servers-live')?.innerText.includes('stopped')", timeout=60_000)
    assert not psutil.pid_exists(status.pid) and port_holder("127.0.0.1", port) is None
    # The in-process engine: what it holds, and Unload.
    page.wait_for_function("document.querySelector('#engine-status')?.innerText.includes('memory')", timeout=60_000)
    page.locator("#engine-unload").click()
    page.wait_for_function("document.querySelector('#engine-status')?.innerText.includes('no model loaded')",
                           timeout=60_000)
    assert app.controller.engine.status().state == "empty"


def test_the_engine_panel_lists_the_loaded_models_pins_one_and_unloads_another(start_app, browser_page,
                                                                                tiny_tool_llama):
    app = start_app()
    engine, settings = app.controller.engine, app.controller.store.settings
    chat_model = settings.app()["model"]
    engine.load(chat_model).result(timeout=120)
    engine.load(str(tiny_tool_llama)).result(timeout=120)  # as an API request for it would
    page = browser_page
    page.goto(app.url)
    page.get_by_role("tab", name="Servers").click()
    page.wait_for_function("document.querySelector('#engine-status')?.innerText.includes('2 models in memory')",
                           timeout=30_000)
    panel = page.locator("#engine-status").inner_text()
    assert "tiny-random-llama" in panel and "tiny-tool-llama" in panel and "Last use" in panel
    page.locator("#engine-model input").click()
    page.get_by_role("option", name="tiny-random-llama").click()
    page.locator("#engine-pin input").check()
    page.wait_for_function("document.querySelector('#engine-status')?.innerText.includes('pinned')",
                           timeout=30_000)
    assert settings.app()["pinned_models"] == [chat_model]
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#engine-panel").first.screenshot(path=str(ARTIFACTS / "engine.png"))
    page.locator("#engine-model input").click()
    page.get_by_role("option", name="tiny-tool-llama").click()
    page.locator("#engine-unload").click()
    page.wait_for_function("document.querySelector('#engine-status')?.innerText.includes('1 model in memory')",
                           timeout=30_000)
    assert [m.path for m in engine.status().models] == [chat_model] and engine.status().models[0].pinned
    assert not page.locator(".toast-body.error").count()
