"""The app's own API against raw mlx-lm and `mlx_lm.server`: decode speed, a resent conversation, memory.

Run `python bench/api.py`. The demo model, three ways at once: `mlx_lm.stream_generate` in this
process (raw), the running app (`python app.py --api-port …`, the model loaded once for its chat
and its API), and `mlx_lm.server` started with the same model, both called with the `openai`
client. Decode rates count tokens alike on every side: the generator's own count (raw) or the
`usage.completion_tokens` each server reports, after the first token, over the time from the first
to the last piece of text seen here; the sides take turns, `--repeats` times. Then a conversation of
about 700 tokens sent once and resent with one more turn, as every client does: the resent one's
time to its first token, on the app's API and on `mlx_lm.server` (each keeps a prompt cache). A
fourth decode side holds the app API's answer to a JSON schema (`response_format`, llguidance's
token mask at every step; `mlx_lm.server` has no structured output to compare with). Then
the memory of "the chat and the API on one model" (the app after a chat reply and an API reply)
against "the chat and a second server" (the app after a chat reply, plus `mlx_lm.server`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chat import GREEDY_SETTINGS, TOKENS, raw_rate, stop_process, stream_rate  # noqa: E402
from report import Row, demo_arguments, print_table  # noqa: E402

from mlx_gradio.models.demo import DEMO_NAME, demo_model_dir, prepare_demo_model  # noqa: E402
from mlx_gradio.net import free_port, wait_for_page  # noqa: E402

STORY = {"type": "json_schema", "json_schema": {"name": "story", "schema": {
    "type": "object", "properties": {"title": {"type": "string"}, "story": {"type": "string"}},
    "required": ["title", "story"], "additionalProperties": False}}}
HISTORY = ("The history of bread goes back thousands of years, to the first farmers who ground wild grain between "
           "stones and baked the paste on hot rocks. ") * 24  # about 700 tokens with the question and template


def openai_client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=1800)


def first_token_s(url: str, model: str, messages: list[dict]) -> tuple[float, str]:
    """Seconds to the first piece of text of a streamed greedy reply, and the whole reply."""
    started, first, text = time.perf_counter(), None, ""
    stream = openai_client(url).chat.completions.create(model=model, stream=True, max_tokens=16, temperature=0,
                                                        messages=messages)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - started
            text += chunk.choices[0].delta.content
    return first, text


def resent_ttft(url: str, model: str) -> float:
    """A ~700-token conversation sent, then resent with its answer and one more question: the resent one's
    time to the first token."""
    conversation = [{"role": "user", "content": HISTORY + "What did the first farmers do?"}]
    _, answer = first_token_s(url, model, conversation)
    resent = [*conversation, {"role": "assistant", "content": answer}, {"role": "user", "content": "Why stones?"}]
    return first_token_s(url, model, resent)[0]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 1e6


def chat_once(url: str, model: Path) -> None:
    """One reply in the app's chat (gradio_client), so the chat holds the model."""
    from gradio_client import Client

    settings = [*GREEDY_SETTINGS]
    settings[7] = 8  # max tokens: it only has to load the model and answer
    Client(url, verbose=False).submit({"text": "Hello", "files": []}, str(model), *settings,
                                      api_name="/send").result(timeout=1800)


def main() -> None:
    args = demo_arguments(__doc__)
    model = prepare_demo_model(args.data_dir)
    weights_mb = sum(f.stat().st_size for f in Path(model).glob("*.safetensors")) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        page, api, server_port = free_port(), free_port(), free_port()
        # The app's own demo model (a copy of the one fetched once), so that the chat and the API name one folder.
        model = Path(shutil.copytree(model, demo_model_dir(Path(tmp) / "data")))
        app = subprocess.Popen([sys.executable, "app.py", "--no-browser", "--port", str(page), "--data-dir",
                                str(Path(tmp) / "data"), "--log-level", "WARNING", "--model", str(model),
                                "--api-port", str(api)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        server = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--host",
                                   "127.0.0.1", "--port", str(server_port), "--max-tokens", "2048"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ours, theirs = f"http://127.0.0.1:{api}/v1", f"http://127.0.0.1:{server_port}/v1"
        try:
            wait_for_page(f"http://127.0.0.1:{page}/", app)
            chat_once(f"http://127.0.0.1:{page}/", model)
            memory_chat_only = rss_mb(app.pid)
            raw_rate(model)  # warm-up of every side: load, compile kernels
            stream_rate(ours, DEMO_NAME)
            stream_rate(theirs, "default_model")
            memory_chat_and_api = rss_mb(app.pid)
            memory_server = rss_mb(server.pid)
            stream_rate(ours, DEMO_NAME, response_format=STORY)  # llguidance reads the vocabulary once
            measures = {"raw": lambda: raw_rate(model), "app API": lambda: stream_rate(ours, DEMO_NAME),
                        "mlx_lm.server": lambda: stream_rate(theirs, "default_model"),
                        "app API, JSON schema": lambda: stream_rate(ours, DEMO_NAME, response_format=STORY)}
            rates: dict[str, list[float]] = {name: [] for name in measures}
            for run in range(args.repeats):
                names = list(measures)[run % len(measures):] + list(measures)[:run % len(measures)]
                for name in names:  # rotated, so no side always goes first
                    rates[name].append(measures[name]())
                    logging.warning("run %d %s: %.2f tok/s", run, name, rates[name][-1])
            ttft = {"app API": [resent_ttft(ours, DEMO_NAME)], "mlx_lm.server": [resent_ttft(theirs, "default_model")]}
        finally:
            stop_process(app)
            stop_process(server)
    raw = Row("Decode, raw `mlx_lm.stream_generate`", rates["raw"], " tok/s", baseline=True)
    theirs_row = Row("Decode, streamed through `mlx_lm.server` (openai client)", rates["mlx_lm.server"], " tok/s",
                     compared_with=raw)
    theirs_ttft = Row("A resent 700-token conversation, first token: `mlx_lm.server`", ttft["mlx_lm.server"], " s",
                      baseline=True)
    weights = Row("The demo model's weights on disk", [weights_mb], " MB", 0, baseline=True)
    api_row = Row("Decode, streamed through the app's API (openai client)", rates["app API"], " tok/s",
                   compared_with=raw, goal="≥ 0.97")
    rows = [
        raw,
        api_row,
        theirs_row,
        Row("Decode held to a JSON schema, the app's API compared with free text", rates["app API, JSON schema"],
            " tok/s", compared_with=api_row, goal="≥ 0.9"),
        Row("Decode, the app's API compared with `mlx_lm.server`", rates["app API"], " tok/s",
            compared_with=theirs_row, goal="≥ 1.0"),
        theirs_ttft,
        Row("A resent 700-token conversation, first token: the app's API", ttft["app API"], " s",
            compared_with=theirs_ttft, goal="≤ 1.0"),
        Row("Memory, the chat and a second server (the app + `mlx_lm.server`)", [memory_chat_only + memory_server],
            " MB", 0),
        Row("Memory, the chat and the API on one model (the app alone)", [memory_chat_and_api], " MB", 0),
        weights,
        Row("Memory a second server adds, over the weights", [memory_server], " MB", 0, compared_with=weights),
        Row("Memory the API adds to the app, over the weights (one copy: well under 1)",
            [memory_chat_and_api - memory_chat_only], " MB", 0, compared_with=weights, goal="≤ 0.5"),
    ]
    print_table(f"Demo model, {TOKENS} greedy tokens, sides rotated, median of {args.repeats}", rows)
    print(f"\nThe app's memory with the chat's model loaded: {memory_chat_only:.0f} MB; after serving the API as "
          f"well: {memory_chat_and_api:.0f} MB; `mlx_lm.server` with the same model: {memory_server:.0f} MB.")


if __name__ == "__main__":
    main()
