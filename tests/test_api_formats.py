"""Structured answers through the app's API: a JSON schema or a JSON object asked for in each dialect, decoding
held to it by llguidance, the answer parsed and validated with `jsonschema`."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import httpx
import jsonschema
import openai
import pytest

from mlx_gradio.models.demo import DEMO_NAME

from .test_api import OWNER, api_on, client_for, data_url

CAPITAL = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                            "country": {"type": "string", "maxLength": 40}},
           "required": ["city", "country"], "additionalProperties": False}
ASK = [{"role": "user", "content": "What is the capital of France? Answer in JSON with the city and the country."}]

# Every kind of field, each bounded, so that even random weights finish the object within the tokens allowed.
EVERYTHING = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "kind": {"enum": ["red", "green", "blue"]},
    "count": {"type": "integer", "minimum": 0, "maximum": 999},
    "ratio": {"type": "number", "minimum": 0, "maximum": 1},
    "done": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    "where": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9}},
              "required": ["x"], "additionalProperties": False},
}, "required": ["name", "kind", "count", "ratio", "done", "tags", "where"], "additionalProperties": False}


def test_the_demo_model_answers_a_json_schema_in_each_dialect_and_it_validates(make_controller):
    url = api_on(make_controller(demo=True))
    answer = client_for(url).chat.completions.create(
        model=DEMO_NAME, messages=ASK, temperature=0, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL, "strict": True}})
    city = json.loads(answer.choices[0].message.content)
    jsonschema.validate(city, CAPITAL)
    assert city["city"] == "Paris" and answer.choices[0].finish_reason == "stop"

    events = list(client_for(url).responses.create(
        model=DEMO_NAME, input=ASK[0]["content"], max_output_tokens=60, temperature=0, stream=True,
        text={"format": {"type": "json_schema", "name": "capital", "schema": CAPITAL, "strict": True}}))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert json.loads(streamed) == city  # greedy, the same prompt: the same object, in pieces
    assert events[-1].response.text.format.type == "json_schema"

    claude = anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key="no key", max_retries=0, timeout=300)
    message = claude.messages.create(model=DEMO_NAME, max_tokens=60, messages=ASK,
                                     output_config={"format": {"type": "json_schema", "schema": CAPITAL}})
    assert json.loads(message.content[0].text) == city and message.stop_reason == "end_turn"
    anything = client_for(url).chat.completions.create(model=DEMO_NAME, messages=ASK, temperature=0, max_tokens=60,
                                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


def test_a_reasoning_model_thinks_freely_and_then_answers_in_the_schema(make_controller, thinking_model: Path):
    controller = make_controller()
    settings = controller.store.settings
    settings.update_app(model_folders=[*settings.app()["model_folders"], str(thinking_model)])
    answer = client_for(api_on(controller)).chat.completions.create(
        model=thinking_model.name, messages=ASK, temperature=0, max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL}})
    message = answer.choices[0].message
    assert message.model_extra["reasoning_content"]  # the thinking block, not held to the schema
    jsonschema.validate(json.loads(message.content), CAPITAL)


@pytest.mark.parametrize("seed", range(4))
def test_random_weights_sampled_hot_still_write_json_that_validates(make_controller, tiny_llama: Path, seed: int):
    # The tiny model writes only words when it is free: every brace and quote comes from the grammar.
    client = client_for(api_on(make_controller()))
    answer = client.chat.completions.create(
        model="tiny-random-llama", messages=[{"role": "user", "content": "Hello"}], temperature=1.0, seed=seed,
        max_tokens=400, response_format={"type": "json_schema", "json_schema": {"name": "all", "schema": EVERYTHING}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), EVERYTHING)
    assert answer.choices[0].finish_reason == "stop"  # the grammar ended the reply, not max_tokens


def test_a_vision_model_answers_an_image_in_the_schema(make_controller, tiny_vlm: Path, images):
    controller = make_controller()
    settings = controller.store.settings
    settings.update_app(model_folders=[*settings.app()["model_folders"], str(tiny_vlm)])
    content = [{"type": "text", "text": "Describe it."},
               {"type": "image_url", "image_url": {"url": data_url(images["red"])}}]
    answer = client_for(api_on(controller)).chat.completions.create(
        model="tiny-qwen2-vl", messages=[{"role": "user", "content": content}], temperature=1.0, seed=3,
        max_tokens=400, response_format={"type": "json_schema", "json_schema": {"name": "all", "schema": EVERYTHING}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), EVERYTHING)


def test_formats_that_cannot_be_served_are_refused_in_each_apis_shape(make_controller, tiny_llama: Path):
    controller = make_controller()
    url = api_on(controller)
    client = client_for(url)
    hello = {"model": "tiny-random-llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    refusals = [
        ({"type": "xml"}, "must be text, json_object or json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}, "Invalid type: bogus"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}, "does not exist"),
        ({"type": "json_schema"}, "must be an object with a schema"),
    ]
    for response_format, reason in refusals:
        with pytest.raises(openai.BadRequestError, match=reason) as refused:
            client.chat.completions.create(**hello, response_format=response_format)
        assert refused.value.body["param"] == "response_format"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="one or the other"):
        client.chat.completions.create(**hello, tools=[tool], response_format={"type": "json_object"})
    with pytest.raises(openai.BadRequestError, match="Invalid type"):
        client.responses.create(model="tiny-random-llama", input="Hello", max_output_tokens=4,
                                text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "bogus"}}})
    raw = httpx.post(f"{url}/messages", json={**hello, "output_config": {"format": {"type": "json_schema",
                                                                                      "schema": {"type": "bogus"}}}})
    assert raw.status_code == 400 and raw.json()["type"] == "error"
    assert "Invalid type" in raw.json()["error"]["message"]
    assert [r.status for r in controller.api.view(OWNER).requests][:7] == [400] * 7
