"""Guests sending at once, through the real app with logins: does the owner's page still come quickly?

    python bench/load.py [--guests 1 10 50] [--tokens N] [--data-dir DIR]

Starts `python app.py` with one owner and the guests as logins, on a tiny random llama (replies are
the work of the queue and the engine, not of the words). For each number of guests, every guest
sends a message at once (a gradio_client session each, as a browser tab is); meanwhile the owner
loads the page again and again (the page's own first request, `/page_load`) and sends a message of
their own. Prints the owner's page-load and reply times under that load against idle, the time
until every guest was answered, and the app's memory and threads before and after.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chat import stop_process  # noqa: E402
from report import Row, print_table  # noqa: E402

from mlx_gradio.net import free_port, wait_for_page  # noqa: E402
from mlx_gradio.testing.tiny_llama import build_tiny_llama  # noqa: E402

OWNER = ("ann", "owner-pw")
PAGE_GOAL = "≤ 2.0"


def start(data_dir: Path, port: int, model: Path, guests: int):
    """The app with one owner and `guests` guest logins (from a file, as a host would give them)."""
    import subprocess

    logins = data_dir.parent / "guests.txt"
    logins.write_text("".join(f"guest{n}:pw{n}\n" for n in range(guests)))
    logins.chmod(0o600)
    cmd = [sys.executable, "app.py", "--no-browser", "--port", str(port), "--data-dir", str(data_dir),
           "--log-level", "WARNING", "--model", str(model), "--auth", ":".join(OWNER), "--guest-file", str(logins)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def page_load_seconds(client) -> float:
    started = time.perf_counter()
    client.predict(api_name="/page_load")
    return time.perf_counter() - started


def owner_pages(url: str, until: threading.Event, times: list[float]) -> None:
    """The owner opens the page again and again until `until` is set (a new session each time, like a reload)."""
    from gradio_client import Client

    while not until.is_set():
        client = Client(url, auth=OWNER, verbose=False)
        times.append(page_load_seconds(client))


def reply_seconds(client, text: str, tokens: int, sent: threading.Semaphore | None = None) -> float:
    """One message sent in a new chat (greedy, `tokens` long), until the whole reply is there; `sent` is
    released once the message is on its way."""
    started = time.perf_counter()
    job = client.submit({"text": text, "files": []}, "", "", 0.0, 1.0, 0, 0.0, 1.0, -1, tokens, True,
                        api_name="/send")
    if sent is not None:
        sent.release()
    job.result(timeout=1800)
    return time.perf_counter() - started


def guest_sends(client, n: int, tokens: int, go: threading.Event, sent: threading.Semaphore,
                answered: list[float], failures: list[str]) -> None:
    """One guest's tab (signed in already): waits for the others, sends one message, waits for the whole reply."""
    go.wait()
    try:
        answered.append(reply_seconds(client, f"Hello from guest {n}", tokens, sent))
    except Exception as exc:  # noqa: BLE001 - a guest not answered is what this counts
        sent.release()
        failures.append(f"guest {n}: {exc}")


def usage(pid: int) -> tuple[float, int]:
    """(resident MB, threads) of the app's process."""
    import psutil

    process = psutil.Process(pid)
    return process.memory_info().rss / 1e6, process.num_threads()


def run(guests: int, tokens: int, data_dir: Path, model: Path) -> dict:
    port = free_port()
    proc = start(data_dir, port, model, guests)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, proc)
        from gradio_client import Client

        owner = Client(url, auth=OWNER, verbose=False)
        idle = [page_load_seconds(owner) for _ in range(5)]
        idle_replies = [reply_seconds(owner, "Hello from the owner", tokens) for _ in range(3)]
        # Every guest signs in first, one after another (fifty sign-ins at once would time out here before the
        # first message, which is not what this measures); then they all send at once.
        tabs = [Client(url, auth=(f"guest{n}", f"pw{n}"), verbose=False) for n in range(guests)]
        memory_before, threads_before = usage(proc.pid)
        go, sent, answered, failures = threading.Event(), threading.Semaphore(0), [], []
        workers = [threading.Thread(target=guest_sends, args=(tab, n, tokens, go, sent, answered, failures))
                   for n, tab in enumerate(tabs)]
        for worker in workers:
            worker.start()
        started = time.perf_counter()
        go.set()
        done, loaded = threading.Event(), []
        pages = threading.Thread(target=owner_pages, args=(url, done, loaded))
        pages.start()
        for _ in tabs:
            sent.acquire()  # the owner sends once every guest has: their reply waits its turn with theirs
        loaded_reply = reply_seconds(owner, "Hello from the owner", tokens)
        for worker in workers:
            worker.join()
        all_answered = time.perf_counter() - started
        done.set()
        pages.join()
        memory_after, threads_after = usage(proc.pid)
    finally:
        stop_process(proc)
    return {"idle": idle, "loaded": loaded, "idle_replies": idle_replies, "loaded_reply": loaded_reply,
            "all_answered": all_answered, "answered": len(answered),
            "failures": failures, "memory": (memory_before, memory_after), "threads": (threads_before, threads_after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--tokens", type=int, default=32, help="tokens in each guest's reply")
    parser.add_argument("--data-dir", type=Path, default=None, help="(default: a fresh temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir or tmp)
        model = build_tiny_llama(root / "tiny-random-llama")
        rows, notes = [], []
        for guests in args.guests:
            result = run(guests, args.tokens, root / f"data-{guests}", model)
            idle = Row(f"{guests} guest(s): owner's page load, idle", result["idle"], " s", 3, baseline=True)
            rows += [idle, Row(f"{guests} guest(s): owner's page load while they send", result["loaded"] or [0.0],
                               " s", 3, compared_with=idle, goal=PAGE_GOAL)]
            idle_reply = Row(f"{guests} guest(s): owner's reply, idle", result["idle_replies"], " s", 2, baseline=True)
            rows += [idle_reply, Row(f"{guests} guest(s): owner's reply sent with theirs", [result["loaded_reply"]],
                                     " s", 2, compared_with=idle_reply),
                     Row(f"{guests} guest(s): until every guest was answered", [result["all_answered"]], " s", 1)]
            (memory_before, memory_after), (threads_before, threads_after) = result["memory"], result["threads"]
            failed = "; " + "; ".join(result["failures"][:3]) if result["failures"] else ""
            notes.append(f"{guests} guest(s): {result['answered']} of {guests} answered{failed}"
                         f"; the owner's page loaded {len(result['loaded'])} times meanwhile; app memory "
                         f"{memory_before:.0f} → {memory_after:.0f} MB, threads {threads_before} → {threads_after}.")
        print_table(f"The owner's page while guests send at once ({args.tokens} tokens each, tiny random llama; "
                    f"owner's page loads: medians)", rows)
        print()
        for note in notes:
            print(note)


if __name__ == "__main__":
    main()
