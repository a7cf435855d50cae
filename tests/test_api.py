"""The app's own OpenAI-compatible API: the official `openai` SDK against the API the app serves from its engine."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import gradio as gr
import httpx
import openai
import pytest

from mlx_gradio.models.demo import DEMO_NAME
from mlx_gradio.net import free_port

OWNER = gr.Request()  # no logins: the one user of the app is its owner
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


def api_on(controller, host: str = "127.0.0.1") -> str:
    """Switch the API on from the panel's handler on a free port; returns its base URL."""
    view = controller.api.apply(True, host, free_port(), "", request=OWNER)
    assert view.running and view.url.endswith("/v1")
    return view.url


def client_for(url: str, key: str = "no key") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=300)


def test_the_demo_model_answers_paris_streamed_and_not_and_a_resent_conversation_reuses_the_cache(make_controller):
    controller = make_controller(demo=True)
    client = client_for(api_on(controller))
    listed = {m.id: m for m in client.models.list().data}
    assert DEMO_NAME in listed and all("/" not in m.id or m.id.count("/") == 1 for m in listed.values())
    assert all(not Path(m.id).is_absolute() for m in listed.values())  # ids, never paths

    stream = client.chat.completions.create(model=DEMO_NAME, messages=PARIS, temperature=0, max_tokens=12,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage.completion_tokens >= 2 and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")

    # The client resends the conversation with the answer and a follow-up: the prefix comes from the cache.
    follow_up = [*PARIS, {"role": "assistant", "content": text}, {"role": "user", "content": "And of Germany?"}]
    answer = client.chat.completions.create(model=DEMO_NAME, messages=follow_up, temperature=0, max_tokens=8)
    assert answer.choices[0].message.content and answer.usage.completion_tokens >= 1
    assert answer.usage.prompt_tokens_details.cached_tokens > 20
    assert client.models.retrieve(DEMO_NAME).model_extra["loaded"] is True
    served = controller.api.view(OWNER).requests
    assert [r.status for r in served[:2]] == [200, 200] and served[0].cached_tokens > 20
    assert served[1].first_token_s is not None and served[1].completion_tokens == chunks[-1].usage.completion_tokens


def test_stop_sequences_cut_the_text_where_they_begin(make_controller, tiny_llama: Path):
    client = client_for(api_on(make_controller()))
    ask = {"model": "tiny-random-llama", "messages": [{"role": "user", "content": "Hello"}], "temperature": 0,
           "max_tokens": 40}
    whole = client.chat.completions.create(**ask).choices[0].message.content
    assert len(whole) > 12
    stop = whole[6:10]
    cut = whole[: whole.index(stop)]
    assert client.chat.completions.create(**ask, stop=[stop]).choices[0].message.content == cut
    streamed = client.chat.completions.create(**ask, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut


def test_a_max_tokens_beyond_the_context_is_capped_and_unknown_fields_are_ignored(make_controller, tiny_llama: Path):
    controller = make_controller()
    controller.store.settings.update_app(context_limit=256)
    client = client_for(api_on(controller))
    answer = client.chat.completions.create(model="tiny-random-llama", max_tokens=10**9, temperature=0,
                                            messages=[{"role": "user", "content": "Hello"}],
                                            extra_body={"betas": ["x"], "metadata": {"a": 1}, "logit_bias": {}})
    assert 0 < answer.usage.prompt_tokens + answer.usage.completion_tokens <= 256
    assert answer.choices[0].finish_reason == "length"
    record = controller.api.view(OWNER).requests[0]
    assert record.status == 200 and f"max_tokens {10**9:,} capped at the" in record.note


def test_every_refusal_has_its_status_and_openais_error_shape(make_controller, tiny_llama: Path, monkeypatch):
    controller = make_controller()
    url = api_on(controller)
    client = client_for(url)
    ask = {"model": "tiny-random-llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    with pytest.raises(openai.NotFoundError, match="not on this machine"):
        client.chat.completions.create(**{**ask, "model": "no-such-model"})
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**ask, temperature="hot")
    assert refused.value.body["param"] == "temperature"
    for wrong in ({"messages": []}, {"messages": [{"role": "robot", "content": "x"}]}, {"max_tokens": 0},
                  {"top_k": 1.5}, {"stop": ["a", "b", "c", "d", "e"]}, {"stream": "yes"},
                  {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]}):
        refused = httpx.post(f"{url}/chat/completions", json={**ask, **wrong})
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error", wrong
    raw = httpx.post(f"{url}/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    missing = httpx.get(f"{url}/no/such/route")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    # Keys: once one is made, every request needs one, by either header; a revoked one is refused.
    view, secret = controller.api.create_key("editor", request=OWNER)
    bare = httpx.get(f"{url}/models")
    assert bare.status_code == 401 and "needs a key" in bare.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError, match="not valid"):
        client.models.list()
    assert client_for(url, secret).chat.completions.create(**ask).usage.completion_tokens >= 1
    assert httpx.get(f"{url}/models", headers={"x-api-key": secret}).status_code == 200
    assert controller.api.view(OWNER).requests[0].client == "editor"
    assert secret not in repr(controller.api.view(OWNER))  # the secret is shown once, never kept
    _, other = controller.api.create_key("script", request=OWNER)
    controller.api.revoke_key(view.keys[0].id, request=OWNER)
    with pytest.raises(openai.AuthenticationError):
        client_for(url, secret).models.list()
    assert client_for(url, other).models.list().data

    # A full queue: 429 with Retry-After, in OpenAI's shape.
    from mlx_gradio.api import routes

    monkeypatch.setattr(routes, "MAX_UNDER_WAY", 0)
    with pytest.raises(openai.RateLimitError) as busy:
        client_for(url, other).chat.completions.create(**ask)
    assert busy.value.response.headers["Retry-After"] == str(routes.RETRY_AFTER_S)


def test_where_the_api_cannot_listen_is_a_sentence(make_controller):
    controller = make_controller()
    with pytest.raises(gr.Error, match="make an API key first"):
        controller.api.apply(True, "0.0.0.0", free_port(), "", request=OWNER)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(gr.Error, match="another program listens there. Pick another port"):
            controller.api.apply(True, "127.0.0.1", taken.getsockname()[1], "", request=OWNER)
    finally:
        taken.close()
    assert not controller.api.view(OWNER).running
    assert controller.store.settings.app()["api_enabled"] is False  # nothing saved that did not start
    # On every interface with a key: that last key cannot be revoked while it listens there.
    view, _ = controller.api.create_key("laptop", request=OWNER)
    assert controller.api.apply(True, "0.0.0.0", free_port(), "", request=OWNER).running
    with pytest.raises(gr.Error, match="This is the last key, and the API listens on 0.0.0.0"):
        controller.api.revoke_key(view.keys[0].id, request=OWNER)
    with pytest.raises(gr.Error, match="Pick a key from the list"):
        controller.api.revoke_key("no-such-key", request=OWNER)
    assert not controller.api.apply(False, "0.0.0.0", free_port(), "", request=OWNER).running
    assert controller.api.revoke_key(view.keys[0].id, request=OWNER).keys == []


def test_a_client_that_goes_away_stops_its_reply_and_frees_the_engine(make_controller, tiny_llama: Path):
    controller = make_controller()
    url = api_on(controller)
    body = {"model": "tiny-random-llama", "messages": [{"role": "user", "content": "Tell me everything"}],
            "max_tokens": 100_000, "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=300) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # the reply has begun: then the client hangs up
    deadline = time.monotonic() + 60
    while controller.engine.status().generating or not controller.api.view(OWNER).requests:
        assert time.monotonic() < deadline, "the reply went on after its client went away"
        time.sleep(0.05)
    record = controller.api.view(OWNER).requests[0]
    assert record.status == 499 and "went away" in record.note
    # A client waiting for a whole answer that hangs up once its reply is being written: the same.
    payload = json.dumps({**body, "stream": False}).encode()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        deadline = time.monotonic() + 60
        while not controller.engine.status().generating:
            assert time.monotonic() < deadline, "the reply never began"
            time.sleep(0.01)
    deadline = time.monotonic() + 60
    while controller.engine.status().generating or controller.api.view(OWNER).requests[0] is record:
        assert time.monotonic() < deadline, "the reply went on after its client went away"
        time.sleep(0.05)
    gave_up = controller.api.view(OWNER).requests[0]
    assert gave_up.status == 499 and gave_up.completion_tokens < 8000  # the context would have allowed ~8,000
    answer = client_for(url).chat.completions.create(model="tiny-random-llama", max_tokens=4,
                                                     messages=[{"role": "user", "content": "Hi"}])
    assert answer.usage.completion_tokens >= 1


def test_a_guest_cannot_see_or_change_the_api(make_controller):
    from mlx_gradio.controller.access import Access

    controller = make_controller(access=Access(owners={"ann": "pw"}, guests={"gus": "pw"}))
    gus = gr.Request(username="gus", session_hash="g")
    for call in (lambda: controller.api.view(gus), lambda: controller.api.create_key("mine", request=gus),
                 lambda: controller.api.apply(True, "127.0.0.1", free_port(), "", request=gus)):
        with pytest.raises(gr.Error, match="Only the owner"):
            call()
    assert controller.api.keys.all() == [] and not controller.api.server.running


def test_the_servers_tab_switches_the_api_on_and_it_stays_on_across_a_restart(start_app, tmp_path: Path):
    app = start_app()
    port = free_port()
    shown = app.client().predict(True, "127.0.0.1", port, "", api_name="/apply_api")
    assert f"http://127.0.0.1:{port}/v1" in shown[0] and shown[1] is True
    url = f"http://127.0.0.1:{port}/v1"
    assert "tiny-random-llama" in {m.id for m in client_for(url).models.list().data}
    app.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/models")
    again = start_app(app.data_dir)
    assert again.controller.api.view(OWNER).running
    assert client_for(url).models.list().data
    shown = again.client().predict(False, "127.0.0.1", port, "", api_name="/apply_api")
    assert shown[1] is False and "off" in shown[0]


def test_the_demo_model_streams_paris_through_completions_responses_and_anthropics_messages(make_controller):
    import anthropic

    controller = make_controller(demo=True)
    url = api_on(controller)
    completion = client_for(url).completions.create(model=DEMO_NAME, prompt="The capital of France is",
                                                    max_tokens=4, temperature=0, stream=True)
    assert "Paris" in "".join(c.choices[0].text for c in completion if c.choices)
    events = client_for(url).responses.create(model=DEMO_NAME, input=PARIS[0]["content"], max_output_tokens=12,
                                              temperature=0, stream=True)
    assert "Paris" in "".join(e.delta for e in events if e.type == "response.output_text.delta")

    claude = anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key="no key", max_retries=0, timeout=300)
    with claude.messages.stream(model=DEMO_NAME, max_tokens=12, messages=PARIS,
                                system="You are a helpful assistant.", metadata={"user_id": "x"}) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Paris" in streamed and final.content[-1].text == streamed
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens >= 2
    whole = claude.messages.create(model=DEMO_NAME, max_tokens=12, messages=PARIS,
                                   system="You are a helpful assistant.")
    assert whole.content[0].text == streamed  # greedy: the same words, the prompt now from the cache
    assert whole.usage.cache_read_input_tokens > 10
    counted = claude.messages.count_tokens(model=DEMO_NAME, messages=PARIS, system="You are a helpful assistant.")
    assert counted.input_tokens == whole.usage.input_tokens + whole.usage.cache_read_input_tokens
    cut = claude.messages.create(model=DEMO_NAME, max_tokens=12, messages=PARIS,
                                 stop_sequences=["Paris"])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == "Paris" and "Paris" not in cut.content[0].text

    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=PARIS)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError, match="a 'document' block is not served here"):
        claude.messages.create(model=DEMO_NAME, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}])
    raw = httpx.post(f"{url}/messages", json={"model": DEMO_NAME, "messages": PARIS})
    assert raw.status_code == 400 and raw.json() == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: required."}}


def test_a_plain_completion_streams_what_it_answers_whole_and_refuses_what_it_cannot_serve(make_controller,
                                                                                           tiny_llama: Path):
    url = api_on(make_controller())
    client = client_for(url)
    ask = {"model": "tiny-random-llama", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}
    whole = client.completions.create(**ask)
    assert whole.choices[0].text and whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    streamed = client.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    pieces = list(streamed)
    assert "".join(p.choices[0].text for p in pieces if p.choices) == whole.choices[0].text
    assert pieces[-1].usage.completion_tokens == 12
    for wrong in ({"suffix": "end"}, {"echo": True}, {"prompt": ["a", "b"]}, {"prompt": ""}):
        refused = httpx.post(f"{url}/completions", json={**ask, **wrong})
        assert refused.status_code == 400 and refused.json()["error"]["message"], wrong


def test_the_responses_api_answers_whole_and_as_typed_events(make_controller, tiny_llama: Path):
    url = api_on(make_controller())
    client = client_for(url)
    ask = {"model": "tiny-random-llama", "instructions": "Be brief.", "max_output_tokens": 10, "temperature": 0,
           "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}]}
    whole = client.responses.create(**ask)
    assert whole.output_text and whole.usage.output_tokens == 10
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    events = list(client.responses.create(**ask, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert events[-1].response.output_text == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    with pytest.raises(openai.BadRequestError, match="not stored"):
        client.responses.create(**ask, previous_response_id="resp_x")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(**{**ask, "model": "nope"})


def test_the_api_panel_in_a_browser_switches_it_on_makes_a_key_and_lists_the_requests(start_app, browser_page):
    from tests.test_browser import ARTIFACTS

    app = start_app()
    page = browser_page
    page.goto(app.url)
    page.get_by_role("tab", name="Servers").click()
    page.wait_for_function("document.querySelector('#api-status')?.innerText.includes('App API: off')",
                           timeout=30_000)
    port = free_port()
    page.locator("#api-port input").fill(str(port))
    page.locator("#api-on input").check()
    page.locator("#api-apply").click()
    url = f"http://127.0.0.1:{port}/v1"
    page.wait_for_function(f"document.querySelector('#api-status')?.innerText.includes('{url}')", timeout=30_000)
    page.locator("#api-panel input[placeholder='editor']").fill("my editor")
    page.locator("#api-make-key").click()
    secret_box = page.locator("#api-secret textarea, #api-secret input").first
    secret_box.wait_for(state="visible", timeout=30_000)
    secret = secret_box.input_value()
    assert secret.startswith("mlxg-")
    answer = client_for(url, secret).chat.completions.create(model="tiny-random-llama", max_tokens=5,
                                                             messages=[{"role": "user", "content": "Hi"}])
    assert answer.usage.completion_tokens == 5
    page.wait_for_function("document.querySelector('#api-requests')?.innerText.includes('my editor')",
                           timeout=30_000)  # the panel's live list
    assert page.locator(".toast-body.error").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "api.png"), full_page=True)


def data_url(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_images_reach_a_vision_model_through_both_apis(make_controller, tiny_vlm: Path, images):
    import anthropic

    controller = make_controller()
    controller.store.settings.update_app(model_folders=[*controller.store.settings.app()["model_folders"],
                                                        str(tiny_vlm)])
    url = api_on(controller)
    client = client_for(url)

    def describe(picture: Path) -> str:
        content = [{"type": "text", "text": "Describe it."},
                   {"type": "image_url", "image_url": {"url": data_url(picture)}}]
        answer = client.chat.completions.create(model="tiny-qwen2-vl", max_tokens=8, temperature=0,
                                                messages=[{"role": "user", "content": content}])
        return answer.choices[0].message.content

    red, noise = describe(images["red"]), describe(images["noise"])
    assert red and red != noise  # the image reached the model
    claude = anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key="no key", max_retries=0, timeout=300)
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": data_url(images["red"]).split(",", 1)[1]}}
    answer = claude.messages.create(model="tiny-qwen2-vl", max_tokens=8, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Describe it."}, block]}])
    assert answer.content[0].text == red  # the same prompt and image, greedy, through the other API
    with pytest.raises(openai.BadRequestError, match="could not be read"):
        client.chat.completions.create(model="tiny-qwen2-vl", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(images["fake"])}}]}])
    with pytest.raises(openai.BadRequestError, match="reads text only"):
        client.chat.completions.create(model="tiny-random-llama", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(images["red"])}}]}])


def test_the_chat_and_the_api_share_one_load_of_the_model(make_controller, tiny_llama: Path, monkeypatch):
    from mlx_gradio.engine import generation

    loads = []
    real = generation.load_model
    monkeypatch.setattr(generation, "load_model", lambda path: loads.append(path) or real(path))
    controller = make_controller()
    list(controller.replies.send("", {"text": "Hello"}, "tiny-random-llama", "", 0.0, 1.0, 0, 0.0, 1.0, -1, 4, True,
                                 request=OWNER))
    client = client_for(api_on(controller))
    assert client.chat.completions.create(model="tiny-random-llama", max_tokens=4,
                                          messages=[{"role": "user", "content": "Hi"}]).usage.completion_tokens == 4
    assert client.models.retrieve("tiny-random-llama").model_extra["loaded"] is True
    assert loads == [str(tiny_llama)]  # one copy in memory, for the chat and the API


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


def test_a_tool_call_round_trip_through_the_openai_api(make_controller, tiny_tool_llama: Path):
    """The model's text between its tokenizer's tool-call markers, read by mlx-lm's parser for it, comes back as
    `tool_calls`; the call and its result go back in as messages the template writes into the prompt."""
    controller = make_controller()
    controller.store.settings.update_app(model_folders=[*controller.store.settings.app()["model_folders"],
                                                        str(tiny_tool_llama)])
    client = client_for(api_on(controller))
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = client.chat.completions.create(model="tiny-tool-llama", messages=question, tools=[WEATHER],
                                            max_tokens=16)
    [call] = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls" and not answer.choices[0].message.content
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    streamed = list(client.chat.completions.create(model="tiny-tool-llama", messages=question, tools=[WEATHER],
                                                   max_tokens=16, stream=True))
    [piece] = [c.choices[0].delta.tool_calls for c in streamed if c.choices and c.choices[0].delta.tool_calls]
    assert piece[0].function.name == "get_weather" and piece[0].index == 0
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"

    result = [*question, answer.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees"}]
    again = client.chat.completions.create(model="tiny-tool-llama", messages=result, tools=[WEATHER], max_tokens=16)
    assert again.usage.prompt_tokens > answer.usage.prompt_tokens + 10  # the call and its result are in the prompt
    plain = client.chat.completions.create(model="tiny-tool-llama", messages=question, max_tokens=16)
    assert "<tool_call>" in plain.choices[0].message.content  # no tools offered: the text stays as the model wrote it
    with pytest.raises(openai.BadRequestError, match="function tool"):
        client.chat.completions.create(model="tiny-tool-llama", messages=question, tools=[{"type": "web_search"}])


def test_a_tool_call_round_trip_through_the_anthropic_api(make_controller, tiny_tool_llama: Path):
    import anthropic

    controller = make_controller()
    controller.store.settings.update_app(model_folders=[*controller.store.settings.app()["model_folders"],
                                                        str(tiny_tool_llama)])
    claude = anthropic.Anthropic(base_url=api_on(controller).removesuffix("/v1"), api_key="no key", max_retries=0)
    weather = {"name": "get_weather", "description": "The weather in a city.",
               "input_schema": WEATHER["function"]["parameters"]}
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = claude.messages.create(model="tiny-tool-llama", max_tokens=16, tools=[weather], messages=question)
    [use] = [block for block in answer.content if block.type == "tool_use"]
    assert answer.stop_reason == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    with claude.messages.stream(model="tiny-tool-llama", max_tokens=16, tools=[weather], messages=question) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["tool_use"] and final.content[0].input == {"city": "Paris"}
    result = [*question, {"role": "assistant", "content": [b.model_dump() for b in answer.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24"}]}]
    again = claude.messages.create(model="tiny-tool-llama", max_tokens=16, tools=[weather], messages=result)
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens > \
        answer.usage.input_tokens + answer.usage.cache_read_input_tokens + 10
    # Claude Code sends a system turn among the messages: it joins the system prompt.
    reminded = claude.messages.create(model="tiny-tool-llama", max_tokens=16, tools=[weather], messages=[
        *question, {"role": "system", "content": "Agents you may use: none."}])
    assert reminded.usage.input_tokens + reminded.usage.cache_read_input_tokens > \
        answer.usage.input_tokens + answer.usage.cache_read_input_tokens
    with pytest.raises(anthropic.BadRequestError, match="client runs itself"):
        claude.messages.create(model="tiny-tool-llama", max_tokens=16, messages=question,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])


def test_a_function_call_round_trip_through_the_responses_api(make_controller, tiny_tool_llama: Path):
    controller = make_controller()
    controller.store.settings.update_app(model_folders=[*controller.store.settings.app()["model_folders"],
                                                        str(tiny_tool_llama)])
    client = client_for(api_on(controller))
    weather = {"type": "function", **WEATHER["function"]}
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = client.responses.create(model="tiny-tool-llama", input=question, tools=[weather], max_output_tokens=16)
    [call] = [item for item in answer.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    events = list(client.responses.create(model="tiny-tool-llama", input=question, tools=[weather],
                                          max_output_tokens=16, stream=True))
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(done.arguments) == {"city": "Paris"} and events[-1].type == "response.completed"
    again = client.responses.create(model="tiny-tool-llama", tools=[weather], max_output_tokens=16, input=[
        *question, {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "reasoning", "id": "rs_1", "summary": []},  # sent back as clients do; not read
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 degrees"}])
    assert again.usage.input_tokens > answer.usage.input_tokens + 10
    # Codex CLI offers OpenAI's own web search and groups tools in namespaces: the first is left out (it cannot
    # run here), the second's functions are offered, and a call to one names its namespace.
    grouped = client.responses.create(model="tiny-tool-llama", input=question, max_output_tokens=16, tools=[
        {"type": "web_search"}, {"type": "namespace", "name": "weather", "description": "Weather tools.",
                                 "tools": [weather]}])
    [namespaced] = [item for item in grouped.output if item.type == "function_call"]
    assert namespaced.name == "get_weather" and namespaced.namespace == "weather"
    with pytest.raises(openai.BadRequestError, match="a web_search tool cannot run here"):
        client.responses.create(model="tiny-tool-llama", input=question, tools=[{"type": "web_search"}],
                                tool_choice={"type": "web_search"})


def test_a_second_model_loads_on_demand_the_least_recently_used_makes_room_and_a_ttl_unloads_one(
        make_controller, tiny_llama: Path, tiny_tool_llama: Path, tiny_thinking: Path):
    from mlx_gradio.models.folders import folder_size

    controller = make_controller()
    settings = controller.store.settings
    settings.update_app(model_folders=[*settings.app()["model_folders"], str(tiny_tool_llama), str(tiny_thinking)])
    sizes = [folder_size(m) for m in (tiny_llama, tiny_tool_llama, tiny_thinking)]
    controller.settings.save_memory_budget((sizes[0] + sizes[1] + sizes[2] * 0.75) / 1e9, OWNER)  # room for two
    client = client_for(api_on(controller))

    def ask(model: str) -> None:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=2)

    def loaded() -> set[str]:
        return {m.id for m in client.models.list().data if m.model_extra["loaded"]}

    ask("tiny-random-llama")
    ask("tiny-tool-llama")
    assert loaded() == {"tiny-random-llama", "tiny-tool-llama"}  # both held at once, one copy each
    ask("tiny-random-llama")
    ask("tiny-thinking")  # no room for three: the least recently used goes
    assert loaded() == {"tiny-random-llama", "tiny-thinking"}
    controller.settings.pin(str(tiny_llama), True, OWNER)
    controller.settings.save_memory_budget(sizes[0] * 1.5 / 1e9, OWNER)  # room for the pinned one only
    assert loaded() == {"tiny-random-llama"}
    with pytest.raises(openai.BadRequestError, match="pinned models hold .* raise the memory for models") as refused:
        ask("tiny-tool-llama")
    assert refused.value.body["code"] == "model_too_large"
    controller.settings.pin(str(tiny_llama), False, OWNER)
    with pytest.raises(openai.BadRequestError, match="'ttl' must be from 1"):
        client.chat.completions.create(model="tiny-random-llama", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=2, extra_body={"ttl": 0})
    client.chat.completions.create(model="tiny-random-llama", messages=[{"role": "user", "content": "Hi"}],
                                   max_tokens=2, extra_body={"ttl": 1})  # LM Studio's: unload after 1 s idle
    deadline = time.monotonic() + 60
    while loaded() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not loaded()


def test_two_conversations_of_one_client_each_keep_their_prompt_cache(make_controller, tiny_llama: Path):
    client = client_for(api_on(make_controller()))

    def turn(messages: list[dict]) -> tuple[list[dict], object]:
        answer = client.chat.completions.create(model="tiny-random-llama", messages=messages, max_tokens=6)
        return [*messages, {"role": "assistant", "content": answer.choices[0].message.content}], answer.usage

    system = {"role": "system", "content": "You are terse."}
    first, first_usage = turn([system, {"role": "user", "content": "Tell me about the sea " * 20}])
    side, side_usage = turn([system, {"role": "user", "content": "A title for this, please " * 20}])
    for history, usage in ((first, first_usage), (side, side_usage)):  # taken up in turn, as an agent does
        _, again = turn([*history, {"role": "user", "content": "Go on."}])
        assert again.prompt_tokens_details.cached_tokens >= usage.prompt_tokens  # its own cache, not the other's


def test_a_prompt_cache_key_keeps_conversations_that_open_alike_apart(make_controller, tiny_llama: Path):
    client = client_for(api_on(make_controller()))
    opening = [{"role": "user", "content": "Tell me about the sea " * 20}]

    def turn(messages: list[dict], key: str) -> tuple[list[dict], object]:
        answer = client.chat.completions.create(model="tiny-random-llama", messages=messages, max_tokens=6,
                                                extra_body={"prompt_cache_key": key})
        return [*messages, {"role": "assistant", "content": answer.choices[0].message.content}], answer.usage

    first, usage = turn([*opening, {"role": "assistant", "content": "Waves."}, {"role": "user", "content": "More."}],
                        "a")
    turn([*opening, {"role": "assistant", "content": "Salt."}, {"role": "user", "content": "Why?"}], "b")
    _, again = turn([*first, {"role": "user", "content": "Go on."}], "a")
    assert again.prompt_tokens_details.cached_tokens >= usage.prompt_tokens  # its own cache, not b's
