"""The app's API on its ready servers: a server started from the Servers tab is a model of the app's API while it
is ready, answered with the server's own words through the official `openai` and `anthropic` SDKs, and what a
reply through a server cannot carry is refused in each API's shape."""

from __future__ import annotations

import anthropic
import openai
import pytest

from mlx_gradio.serving.supervisor import FAILED, READY, STOPPED

from .test_api import OWNER, api_on, client_for
from .test_servers import wait_state

HELLO = [{"role": "user", "content": "Hello"}]


def test_a_ready_server_is_a_model_of_the_apps_api_until_it_stops(make_controller):
    controller = make_controller()
    part = controller.servers
    profile = part.save({**part.draft(OWNER).record(), "name": "tiny server"}, OWNER)
    url = api_on(controller)
    client = client_for(url)
    key = f"server:{profile.id}"
    assert key not in {m.id for m in client.models.list().data}  # a saved profile is no model until it is ready
    part.start(profile.id, OWNER)
    status = wait_state(part.servers, profile.id, (READY, FAILED))
    assert status.state == READY, part.log_tail(profile.id, OWNER)

    card = client.models.retrieve(key)
    assert card.model_extra["loaded"] is True and card.model_extra["server"] == "tiny server"
    ask = {"messages": HELLO, "temperature": 0, "max_tokens": 10}
    direct = client_for(status.url, "x").chat.completions.create(model="default_model", **ask)
    posts = part.log_tail(profile.id, OWNER).count("POST /v1/chat/completions")  # in the server's own log
    answer = client.chat.completions.create(model=key, **ask)
    assert answer.choices[0].message.content == direct.choices[0].message.content  # the server's own words
    assert answer.usage.completion_tokens == direct.usage.completion_tokens == 10 and answer.model == key
    stream = client.chat.completions.create(model=key, stream=True, stream_options={"include_usage": True}, **ask)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    claude = anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key="no key", max_retries=0)
    message = claude.messages.create(model=key, max_tokens=10, messages=HELLO, extra_body={"temperature": 0})
    assert message.content[0].text == answer.choices[0].message.content and message.usage.output_tokens == 10
    assert all(m.conversations == 0 for m in controller.engine.status().models)  # no reply came from the engine
    assert part.log_tail(profile.id, OWNER).count("POST /v1/chat/completions") >= posts + 3

    refusals = {
        "tools": lambda: client.chat.completions.create(model=key, tools=[{"type": "function", "function": {
            "name": "weather", "parameters": {"type": "object", "properties": {}}}}], **ask),
        "a response format": lambda: client.chat.completions.create(model=key, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, **ask),
        "a plain completion": lambda: client.completions.create(model=key, prompt="Hello", max_tokens=5),
    }
    for what, call in refusals.items():
        with pytest.raises(openai.BadRequestError, match=f"served by the server “tiny server”.*not {what}"):
            call()
    with pytest.raises(anthropic.BadRequestError, match="whose tokenizer this app does not hold"):
        claude.messages.count_tokens(model=key, messages=HELLO)
    served = controller.api.view(OWNER).requests
    assert [r.status for r in served[:4]] == [400, 400, 400, 400] and all(r.model == key for r in served[:7])
    assert [r.status for r in served[4:7]] == [200, 200, 200]

    part.stop(profile.id, OWNER)
    assert wait_state(part.servers, profile.id, (STOPPED,)).state == STOPPED
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=key, **ask)
    assert key not in {m.id for m in client.models.list().data}
