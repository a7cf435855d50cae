"""Chat speed on the demo model: raw mlx-lm vs the engine vs the running app, cache reuse, start-up.

    python bench/chat.py [--data-dir DIR] [--repeats N]

Prints a markdown table. Every rate is measured the same way, at the consumer: tokens after the
first one divided by the time from the first to the last token. Runs are interleaved and the
median is kept, because this machine is noisy; compare the ratios, not the absolute numbers.
Start-up is timed to the same milestone for both apps: the first token of an answer to a
message sent as soon as the page answers (mlx-vlm's chat UI loads its model before it serves
the page, this app after), with the page itself as a second row.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import Row, demo_arguments, print_table  # noqa: E402

from mlx_gradio.engine.jobs import ChatMessage, ChatRequest, SamplingParams  # noqa: E402
from mlx_gradio.engine.prompt_files import PromptFiles  # noqa: E402
from mlx_gradio.engine.thread import Engine  # noqa: E402
from mlx_gradio.models.demo import prepare_demo_model  # noqa: E402
from mlx_gradio.net import free_port, wait_for_page  # noqa: E402

PROMPT = "Write a long story about a dragon who learns to bake bread."
TOKENS = 128
GREEDY = SamplingParams(temperature=0.0, max_tokens=TOKENS)
GREEDY_SETTINGS = ["", 0.0, 1.0, 0, 0.0, 1.0, -1, TOKENS, True]
HISTORY_WORDS = 270  # about 400 tokens of history with the chat template
FIRST_QUESTION = "Describe a red square."
FIRST_TOKENS = 128  # the fewest mlx-vlm's chat UI takes; only the first one is timed


def decode_rate(stamps: list[float], tokens: int) -> float:
    """Tokens per second between the first and the last token seen by the consumer."""
    return (tokens - 1) / (stamps[-1] - stamps[0])


def stream_rate(url: str, model: str, **extra) -> float:
    """Tokens per second of a streamed greedy reply through an OpenAI-compatible server (the `openai` client),
    the tokens as the server counts them (`usage` with `stream_options.include_usage`)."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=1800)
    stamps, tokens = [], 0
    stream = client.chat.completions.create(model=model, stream=True, max_tokens=TOKENS, temperature=0,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": PROMPT}], **extra)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return decode_rate(stamps, tokens)


def raw_rate(model_path: Path) -> float:
    """mlx_lm.stream_generate directly, on this thread."""
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    if not hasattr(raw_rate, "loaded"):
        raw_rate.loaded = load(str(model_path))
    model, tokenizer = raw_rate.loaded
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    stamps, tokens = [], 0
    for response in stream_generate(model, tokenizer, prompt, max_tokens=TOKENS, sampler=make_sampler(0.0)):
        stamps.append(time.perf_counter())
        tokens = response.generation_tokens
    return decode_rate(stamps, tokens)


def engine_rate(engine: Engine, model_path: Path, run: int) -> float:
    """The same reply through the engine thread and its event queue."""
    request = ChatRequest(f"bench-{run}", str(model_path), (ChatMessage("user", PROMPT),), GREEDY)
    stamps, stats = [], None
    for event in engine.generate(request).events():
        if event.text:
            stamps.append(time.perf_counter())
        stats = event.stats or stats
    return decode_rate(stamps, stats.generation_tokens)


def app_rate(url: str, model_path: Path) -> float:
    """The same reply through the running app with gradio_client (a new chat each time)."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    client.predict(api_name="/page_load")
    job = client.submit({"text": PROMPT, "files": []}, str(model_path), *GREEDY_SETTINGS, api_name="/send")
    stamps, last_text, stats_line = [], "", ""
    for output in job:
        text = output[0][-1]["content"][0]["text"]
        if not text.startswith("*") and text != last_text:
            stamps.append(time.perf_counter())
            last_text = text
        stats_line = output[3] or stats_line
    tokens = int(stats_line.split(" tokens · ")[0].rsplit("· ", 1)[-1])
    return decode_rate(stamps, tokens)


def start_app(data_dir: Path, port: int, model: Path | None = None) -> subprocess.Popen:
    """`python app.py` on a port."""
    cmd = [sys.executable, "app.py", "--no-browser", "--port", str(port), "--data-dir", str(data_dir),
           "--log-level", "WARNING"]
    if model:
        cmd += ["--model", str(model)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def time_to_first_token(cmd: list[str], port: int, send, env: dict | None = None) -> tuple[float, float]:
    """Seconds from launching `cmd` to its page answering on `port`, and to the first token of the answer
    to a message `send(client)` sends as soon as it does (`send` yields what the reply shows so far)."""
    from gradio_client import Client

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_page(url, proc)
        page_up = time.perf_counter() - started
        for shown in send(Client(url, verbose=False)):
            if shown:
                return page_up, time.perf_counter() - started
        raise RuntimeError(f"{cmd[1]} sent no token")
    finally:
        stop_process(proc)


def ours_sends(model: Path):
    """The message through this app's /send: what the reply shows, without the app's *status* lines."""
    def send(client) -> object:
        job = client.submit({"text": FIRST_QUESTION, "files": []}, str(model), "", 0.0, 1.0, 0, 0.0, 1.0, -1,
                            FIRST_TOKENS, True, api_name="/send")
        for output in job:
            text = output[0][-1]["content"][0]["text"] if output[0] else ""
            yield "" if text.startswith("*") else text
        job.result()  # raises what went wrong, if no token came
    return send


def theirs_sends(client) -> object:
    """The same message through mlx-vlm's ChatInterface (its /chat endpoint streams the reply)."""
    job = client.submit({"text": FIRST_QUESTION, "files": []}, 0.0, FIRST_TOKENS, 1.0, 1.0, "", api_name="/chat")
    for output in job:
        yield output if isinstance(output, str) else str(output or "")
    job.result()


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then kill if it has not exited after a while (open client connections can delay it)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def follow_up_ttft(engine: Engine, model_path: Path, run: int) -> tuple[float, float, float, int]:
    """Time to first token of a follow-up after ~400 tokens of history: cached in memory, uncached,
    and cached on disk by an engine that was shut down and started again."""
    history_text = " ".join(f"Fact {i}: bread needs flour, water, salt and time." for i in range(HISTORY_WORDS // 9))
    params = SamplingParams(temperature=0.0, max_tokens=16)
    first = ChatMessage("user", f"Remember these notes.\n{history_text}")
    reply = ""
    for event in engine.generate(ChatRequest(f"ttft-warm-{run}", str(model_path), (first,), params)).events():
        reply += event.text
    follow = (first, ChatMessage("assistant", reply), ChatMessage("user", "What does bread need?"))
    results = {}
    for conversation in (f"ttft-warm-{run}", f"ttft-cold-{run}"):
        events = list(engine.generate(ChatRequest(conversation, str(model_path), follow, params)).events())
        results[conversation] = events[-1].stats
    with tempfile.TemporaryDirectory() as folder:
        before = Engine(prompt_files=PromptFiles(Path(folder), 10**10))
        list(before.generate(ChatRequest("ttft-disk", str(model_path), (first,), params)).events())
        before.shutdown()  # writes the cache to disk
        after = Engine(prompt_files=PromptFiles(Path(folder), 10**10))
        after.load(str(model_path)).result()  # the model loads before the follow-up, as at an app's start
        events = list(after.generate(ChatRequest("ttft-disk", str(model_path), follow, params)).events())
        after.shutdown()
    cold = results[f"ttft-cold-{run}"]
    return (results[f"ttft-warm-{run}"].time_to_first_token, cold.time_to_first_token,
            events[-1].stats.time_to_first_token, cold.prompt_tokens)


def main() -> None:
    args = demo_arguments(__doc__)
    model_path = prepare_demo_model(args.data_dir)

    port = free_port()
    app = start_app(args.data_dir, port, model_path)
    engine = Engine()
    engine.load(str(model_path)).result()
    rates: dict[str, list[float]] = {"raw": [], "engine": [], "app": []}
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_page(url, app)
        raw_rate(model_path)  # warm-up: compile kernels, load
        measures = {
            "raw": lambda run: raw_rate(model_path),
            "engine": lambda run: engine_rate(engine, model_path, run),
            "app": lambda run: app_rate(url, model_path),
        }
        for run in range(args.repeats):
            order = list(measures)[run % 3:] + list(measures)[:run % 3]  # rotate, so no path always goes first
            for name in order:
                rates[name].append(measures[name](run))
                logging.warning("run %d %s: %.2f tok/s", run, name, rates[name][-1])
        ttft = [follow_up_ttft(engine, model_path, run) for run in range(args.repeats)]
    finally:
        engine.shutdown()
        stop_process(app)

    from mlx_gradio.testing.tiny_vlm import build_tiny_qwen2_vl

    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_qwen2_vl(Path(tmp) / "tiny-qwen2-vl")
        ours, theirs = [], []
        for run in range(args.repeats):
            pair = [
                (ours, lambda p: time_to_first_token(
                    [sys.executable, "app.py", "--no-browser", "--port", str(p), "--data-dir", str(Path(tmp) / "d"),
                     "--model", str(tiny), "--log-level", "WARNING"], p, ours_sends(tiny))),
                (theirs, lambda p: time_to_first_token(
                    [sys.executable, "-m", "mlx_vlm.chat_ui", "--model", str(tiny)], p, theirs_sends,
                    env={"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(p), "BROWSER": "true"})),
            ]
            for times, measure in pair if run % 2 == 0 else pair[::-1]:  # alternate which one goes first
                times.append(measure(free_port()))

    raw = Row("Decode, raw `mlx_lm.stream_generate`", rates["raw"], " tok/s", baseline=True)
    cold = Row(f"Follow-up TTFT after {ttft[0][3]} prompt tokens, uncached", [t[1] for t in ttft], " s",
               baseline=True)
    their_token = Row("`python -m mlx_vlm.chat_ui` to the first token (tiny VLM)", [t[1] for t in theirs], " s",
                      baseline=True)
    their_page = Row("`python -m mlx_vlm.chat_ui` to page (its model loaded first)", [t[0] for t in theirs], " s",
                     baseline=True)
    rows = [
        raw,
        Row("Decode, through the engine thread", rates["engine"], " tok/s", compared_with=raw, goal="≥ 0.99"),
        Row("Decode, through the running app (gradio_client)", rates["app"], " tok/s", compared_with=raw,
            goal="≥ 0.97"),
        cold,
        Row("Follow-up TTFT, cached in memory", [t[0] for t in ttft], " s", compared_with=cold, goal="≤ 0.05"),
        Row("Follow-up TTFT after a restart, cache read from disk", [t[2] for t in ttft], " s", compared_with=cold,
            goal="≤ 0.1"),
        their_token,
        Row("`python app.py` to the first token (same model)", [t[1] for t in ours], " s",
            compared_with=their_token, goal="≤ 1.0"),
        their_page,
        Row("`python app.py` to page (its model loads after)", [t[0] for t in ours], " s",
            compared_with=their_page, goal="≤ 0.75"),
    ]
    print_table(f"Demo model, {TOKENS} greedy tokens; start-up with the tiny VLM; runs interleaved", rows)


if __name__ == "__main__":
    main()
