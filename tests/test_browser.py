"""The app in a real headless chromium (Debian's), driven with Playwright like a person would.

One chromium serves the whole run, each test in a fresh context. The answers are checked on the
demo model; files, settings, versions and logins on the tiny llama.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from mlx_gradio.store import LOCAL_USER

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def short_replies(app, user: str = LOCAL_USER, tokens: int = 24) -> None:
    """Cap a user's replies (the page's default is 1,024 tokens): a tiny model writes to the cap, every time."""
    app.store.settings.update_user(user, max_tokens=tokens)


def bot_text(page) -> str:
    """Text of the last bot message on screen."""
    bots = page.locator("#chatbot .bot")
    return bots.last.inner_text() if bots.count() else ""


def ask_through_the_server(page, needle: str, timeout_s: float = 180) -> list[str]:
    """In the Chat tab, pick the ready server of this app, ask for France's capital and wait for `needle`."""
    page.get_by_role("tab", name="Chat").click()
    page.locator("#model-picker input").click()
    page.get_by_role("option", name="server of this app").click()
    page.wait_for_function("document.querySelector('#model-status')?.innerText.includes('answers from')",
                           timeout=60_000)
    box = page.locator("#chat-input textarea")
    box.fill("What is the capital of France?")
    box.press("Enter")
    return wait_for_reply(page, needle, timeout_s)


def wait_for_reply(page, needle: str, timeout_s: float = 180) -> list[str]:
    """Poll the last bot message until it shows `needle` and the stats line is under it; return what was seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = bot_text(page)
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if needle in text and "tok/s" in page.locator("#reply-stats-line").inner_text():
            return seen
        page.wait_for_timeout(100)
    raise AssertionError(f"no reply with {needle!r} after {timeout_s} s; last seen: {seen[-1:]}")


def test_chat_streams_paris_in_the_browser(start_app, browser_page):
    app = start_app(demo=True)
    page = browser_page
    page.goto(app.url)
    page.wait_for_selector("#chatbot")
    page.wait_for_function("document.querySelector('#model-status').innerText.includes('loaded')", timeout=120_000)
    assert "SmolLM2-135M-Instruct" in page.locator("#model-picker input").input_value()

    box = page.locator("#chat-input textarea")
    box.fill("What is the capital")
    box.press("Shift+Enter")
    box.type(" of France?")
    assert box.input_value() == "What is the capital\n of France?"  # Shift+Enter adds a line, sends nothing
    box.fill("What is the capital of France?")
    box.press("Enter")
    seen = wait_for_reply(page, "Paris")
    assert len(seen) >= 3, f"the reply did not stream: {seen}"
    assert box.input_value() == ""
    assert " · What is the capital" in page.locator("#conversations label").first.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)


def test_image_upload_reaches_the_vision_model(start_app, browser_page, tiny_vlm: Path, images):
    app = start_app()
    short_replies(app)
    app.store.settings.update_app(model_folders=[str(tiny_vlm)])
    page = browser_page
    page.goto(app.url)
    page.wait_for_selector("#chatbot")
    page.locator("#model-picker input").click()
    page.get_by_role("option", name="tiny-qwen2-vl").click()
    page.wait_for_function("document.querySelector('#model-status').innerText.includes('vision')", timeout=120_000)
    page.locator("#chat-input input[type=file]").set_input_files(str(images["red"]))
    page.wait_for_selector("#chat-input img", timeout=30_000)
    page.locator("#chat-input textarea").fill("Describe it.")
    page.locator("#chat-input textarea").press("Enter")
    wait_for_reply(page, "")
    assert page.locator("#chatbot .user img").count() == 1
    [saved] = app.store.conversations.list(LOCAL_USER)[0]
    [message] = app.store.conversations.get(saved.id)["messages"][:1]
    assert len(message["images"]) == 1 and Path(message["images"][0]).exists()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "vision.png"), full_page=True)


def test_regenerate_keeps_versions_and_copy_gives_the_words_only(start_app, browser_page):
    app = start_app()
    short_replies(app)
    page = browser_page
    page.goto(app.url)
    page.wait_for_function("document.querySelector('#model-status')?.innerText.includes('loaded')", timeout=120_000)
    page.locator("#chat-input textarea").fill("What is the capital of France?")
    page.locator("#chat-input textarea").press("Enter")
    first = wait_for_reply(page, "")[-1]
    assert not page.locator("#versions").is_visible()
    page.locator("#regenerate").click()
    page.wait_for_function("document.querySelector('#version-label')?.innerText.includes('2 / 2')", timeout=180_000)
    page.locator("#previous-version").click()
    page.wait_for_function("document.querySelector('#version-label').innerText.includes('1 / 2')", timeout=30_000)
    [saved] = app.store.conversations.list(LOCAL_USER)[0]
    reply = app.store.conversations.get(saved.id)["messages"][1]
    assert len(reply["versions"]) == 2 and reply["current"] == 0
    page.locator("#chatbot button[aria-label='Copy message']").last.click()  # the reply's copy button
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == first.strip() and "tok/s" not in copied
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "versions.png"), full_page=True)


def test_the_login_page_comes_first_and_a_guest_sees_the_chat_only(start_app, browser_page):
    from mlx_gradio.controller.access import Access

    app = start_app(access=Access(owners={"ann": "owner-pw"}, guests={"gus": "guest-pw"}))
    page = browser_page
    page.goto(app.url)
    page.wait_for_selector("input[type=password]", timeout=30_000)
    assert page.locator("#chatbot").count() == 0 and page.locator("#model-picker").count() == 0
    page.locator("input[type=text]").first.fill("gus")
    page.locator("input[type=password]").fill("wrong")
    page.get_by_role("button", name="Login").click()
    page.get_by_text(re.compile("incorrect credentials", re.IGNORECASE)).wait_for(timeout=30_000)
    assert page.locator("#chatbot").count() == 0
    page.locator("input[type=text]").first.fill("gus")
    page.locator("input[type=password]").fill("guest-pw")
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#chatbot", timeout=30_000)
    page.wait_for_function("document.querySelector('#account').innerText.includes('gus')", timeout=30_000)
    assert "guest" in page.locator("#account").inner_text()
    assert not page.get_by_text("Add a model").is_visible() and not page.get_by_text("Engine", exact=True).is_visible()
    assert page.locator("#chat-input").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "guest.png"), full_page=True)


def test_thinking_streams_in_a_block_that_folds_away(start_app, browser_page, thinking_model: Path):
    app = start_app(demo=True)
    app.store.settings.update_app(model_folders=[str(thinking_model)], model=str(thinking_model))
    page = browser_page
    page.goto(app.url)
    page.wait_for_selector("#chatbot")
    # The engine holds the demo model; the picked one is loaded by the first message.
    page.wait_for_function(f"document.querySelector('#model-status').innerText.includes('{thinking_model.name}')",
                           timeout=120_000)
    page.locator("#chat-input textarea").fill("What is the capital of France?")
    page.locator("#chat-input textarea").press("Enter")
    seen = wait_for_reply(page, "Paris")
    assert any("Thinking…" in text for text in seen), f"no pending thinking block while it streamed: {seen}"
    title = page.locator("#chatbot .thought-group .title")
    assert "Thought for" in title.inner_text()
    answer = page.get_by_text("The capital of France is Paris.")
    assert answer.is_visible()
    thinking = page.get_by_text("Capital of France.", exact=True)
    assert thinking.count() == 0 or not thinking.is_visible()  # folded away
    title.click()
    page.get_by_text("Capital of France.", exact=True).wait_for(state="visible")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "thinking.png"), full_page=True)
    [saved] = app.store.conversations.list(LOCAL_USER)[0]
    [version] = app.store.conversations.get(saved.id)["messages"][1]["versions"]
    assert version["content"] == "The capital of France is Paris."
    assert version["reasoning"].strip() == "Capital of France." and version["thought_s"] > 0


def test_maths_renders_inline_and_displayed(start_app, browser_page):
    from mlx_gradio.chats import chat

    app = start_app()
    record = chat.new_conversation(LOCAL_USER, app.controller.models.demo_path)
    chat.add_user_message(record, "Show me some maths.", [])
    chat.add_reply_version(record, 1, "Inline $x^2$ and \\(y_1\\), then $$\\frac{a}{b}$$ and \\[\\sqrt{2}\\] done.",
                           None, app.controller.models.demo_path)
    app.store.conversations.save(record)
    page = browser_page
    page.goto(app.url)
    page.locator("#conversations label").first.click()
    page.wait_for_selector("#chatbot .katex", timeout=30_000)
    assert page.locator("#chatbot .bot .katex-display").count() == 2
    assert page.locator("#chatbot .bot .katex").count() == 4
    assert "$" not in page.locator("#chatbot .bot").last.inner_text().replace("\n", "")


def test_opening_a_conversation_brings_back_its_settings(start_app, browser_page, tiny_llama: Path):
    import gradio as gr

    app = start_app()
    tab = gr.Request(session_hash="seed")
    for prompt, temperature in (("Talk like a pirate.", 0.3), ("Answer in verse.", 0.9)):
        list(app.controller.replies.send("", {"text": "Hi"}, str(tiny_llama), prompt, temperature, 1.0, 0, 0.0, 1.0,
                                         -1, 4, True, request=tab))
    page = browser_page
    page.goto(app.url)
    prompt_box = page.locator("#system-prompt textarea")
    labels = page.locator("#conversations label")
    labels.nth(1).click()  # the older one: the pirate
    page.wait_for_function("document.querySelector('#system-prompt textarea').value === 'Talk like a pirate.'",
                           timeout=30_000)
    assert "own settings" in page.locator("#settings-note").inner_text()
    labels.nth(0).click()
    page.wait_for_function("document.querySelector('#system-prompt textarea').value === 'Answer in verse.'",
                           timeout=30_000)
    page.get_by_role("button", name="+ New chat").click()
    page.wait_for_function("document.querySelector('#system-prompt textarea').value === ''", timeout=30_000)
    assert "new chat" in page.locator("#settings-note").inner_text()
    assert prompt_box.input_value() == ""


def test_a_source_file_dropped_in_the_chat_is_read_and_shown(start_app, browser_page, tmp_path: Path):
    app = start_app()
    short_replies(app)
    source = tmp_path / "hello.py"
    source.write_text('def greet(name):\n    return f"Hello, {name}!"\n')
    page = browser_page
    page.goto(app.url)
    page.wait_for_function("document.querySelector('#model-status')?.innerText.includes('loaded')", timeout=120_000)
    page.locator("#chat-input input[type=file]").set_input_files(str(source))
    page.wait_for_selector("#chat-input [aria-label='File thumbnail']", timeout=30_000)
    page.locator("#chat-input textarea").fill("What does this function do?")
    page.locator("#chat-input textarea").press("Enter")
    wait_for_reply(page, "")
    assert "hello.py" in page.locator("#chatbot .user").first.inner_text()
    [saved] = app.store.conversations.list(LOCAL_USER)[0]
    [attached] = app.store.conversations.get(saved.id)["messages"][0]["files"]
    assert attached["name"] == "hello.py"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "attachment.png"), full_page=True)
