"""Chat speed on the demo model: raw mlx-lm vs the engine vs the running app, cache reuse, start-up.

    python bench/chat.py [--data-dir DIR] [--repeats N]

Prints a markdown table. Every rate is measured the same way, at the consumer: tokens after the
first one divided by the time from the first to the last token. Runs are interleaved and the
median is kept, because this machine is noisy; compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlx_gradio.engine.jobs import ChatMessage, ChatRequest, SamplingParams  # noqa: E402
from mlx_gradio.engine.prompt_files import PromptFiles  # noqa: E402
from mlx_gradio.engine.thread import Engine  # noqa: E402
from mlx_gradio.models.demo import prepare_demo_model  # noqa: E402
from mlx_gradio.net import free_port, wait_for_page  # noqa: E402

PROMPT = "Write a long story about a dragon who learns to bake bread."
TOKENS = 128
GREEDY = SamplingParams(temperature=0.0, max_tokens=TOKENS)
GREEDY_SETTINGS = ["", 0.0, 1.0, 0, 0.0, 1.0, -1, TOKENS, True]
HISTORY_WORDS = 420  # about 600 tokens of history with the chat template


def decode_rate(stamps: list[float], tokens: int) -> float:
    """Tokens per second between the first and the last token seen by the consumer."""
    return (tokens - 1) / (stamps[-1] - stamps[0])


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


def time_to_page(cmd: list[str], port: int, env: dict | None = None) -> float:
    """Seconds from launching `cmd` to its page answering on `port`."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    try:
        wait_for_page(f"http://127.0.0.1:{port}/", proc)
        return time.perf_counter() - started
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then kill if it has not exited after a while (open client connections can delay it)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def follow_up_ttft(engine: Engine, model_path: Path) -> tuple[float, float, float, int]:
    """Time to first token of a follow-up after ~600 tokens of history: cached in memory, uncached,
    and cached on disk by an engine that was shut down and started again."""
    history_text = " ".join(f"Fact {i}: bread needs flour, water, salt and time." for i in range(HISTORY_WORDS // 9))
    params = SamplingParams(temperature=0.0, max_tokens=16)
    first = ChatMessage("user", f"Remember these notes.\n{history_text}")
    reply = ""
    for event in engine.generate(ChatRequest("ttft-warm", str(model_path), (first,), params)).events():
        reply += event.text
    follow = (first, ChatMessage("assistant", reply), ChatMessage("user", "What does bread need?"))
    results = {}
    for conversation in ("ttft-warm", "ttft-cold"):
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
    return (results["ttft-warm"].time_to_first_token, results["ttft-cold"].time_to_first_token,
            events[-1].stats.time_to_first_token, results["ttft-cold"].prompt_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "mlx-gradio-bench")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
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
        warm, cold, restarted, history_tokens = follow_up_ttft(engine, model_path)
    finally:
        engine.shutdown()
        stop_process(app)

    from mlx_gradio.testing.tiny_vlm import build_tiny_qwen2_vl

    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_qwen2_vl(Path(tmp) / "tiny-qwen2-vl")
        ours, theirs = [], []
        for _ in range(args.repeats):
            p = free_port()
            ours.append(time_to_page([sys.executable, "app.py", "--no-browser", "--port", str(p), "--data-dir",
                                      str(Path(tmp) / "d"), "--model", str(tiny), "--log-level", "WARNING"], p))
            p = free_port()
            theirs.append(time_to_page([sys.executable, "-m", "mlx_vlm.chat_ui", "--model", str(tiny)], p,
                                       env={"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(p),
                                            "BROWSER": "true"}))

    median = {k: statistics.median(v) for k, v in rates.items()}
    spread = {k: f"{min(v):.2f}–{max(v):.2f}" for k, v in rates.items()}
    start_ours, start_theirs = statistics.median(ours), statistics.median(theirs)
    rows = [
        ("Decode, raw `mlx_lm.stream_generate`", f"{median['raw']:.2f} tok/s", spread["raw"], "1.00", ""),
        ("Decode, through the engine thread", f"{median['engine']:.2f} tok/s", spread["engine"],
         f"{median['engine'] / median['raw']:.3f}", "≥ 0.99"),
        ("Decode, through the running app (gradio_client)", f"{median['app']:.2f} tok/s", spread["app"],
         f"{median['app'] / median['raw']:.3f}", "≥ 0.97"),
        (f"Follow-up TTFT after {history_tokens} prompt tokens, uncached", f"{cold:.2f} s", "", "1.00", ""),
        ("Follow-up TTFT, cached", f"{warm:.2f} s", "", f"{warm / cold:.3f}", "≤ 0.05"),
        ("Follow-up TTFT after a restart, cache read from disk", f"{restarted:.2f} s", "",
         f"{restarted / cold:.3f}", "≤ 0.1"),
        ("`python -m mlx_vlm.chat_ui` to page (tiny VLM)", f"{start_theirs:.2f} s",
         f"{min(theirs):.2f}–{max(theirs):.2f}", "1.00", ""),
        ("`python app.py` to page (same model)", f"{start_ours:.2f} s", f"{min(ours):.2f}–{max(ours):.2f}",
         f"{start_ours / start_theirs:.3f}", "≤ 0.75"),
    ]
    print(f"\nDemo model, {TOKENS} greedy tokens, median of {args.repeats} interleaved runs\n")
    print("| Measure | Median | Range of runs | Ratio | Goal |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
