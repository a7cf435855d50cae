"""Store benchmark: save and list times at 10, 1,000 and 10,000 conversations of 20 messages.

Run `python bench/store.py`. Each size gets a fresh data dir filled with conversations of 20
messages of 400 characters; then one conversation is saved again and again, and the list (first
page, and a search through message text) is read. The last line is the ratio of the median save
time at 1,000 conversations to that at 10 (the goal is at most 1.5).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlx_gradio.chats import chat  # noqa: E402
from mlx_gradio.files import encode_json  # noqa: E402
from mlx_gradio.store import CONVERSATIONS_DIR, Store  # noqa: E402

log = logging.getLogger("bench.store")
SIZES = (10, 1_000, 10_000)
OWNER = "ann"
SEARCHES = 3  # a search reads every file: a few are enough at 10,000
SAVE_RATIO_GOAL = 1.5  # a save at 1,000 conversations may cost at most this much more than at 10


def make_conversation(n: int) -> dict:
    """A conversation of 20 messages of 400 characters (10 turns)."""
    record = chat.new_conversation(OWNER, "/models/demo")
    for turn in range(10):
        chat.add_user_message(record, f"Question {turn} of conversation {n}: " + "q" * 360, [])
        chat.add_reply_version(record, len(record["messages"]), f"Answer {turn}: " + "a" * 388, None, "/models/demo")
    record["updated"] = record["created"] + n
    return record


def fill(data_dir: Path, count: int) -> None:
    """Write `count` conversation files directly (setup only: no index, no fsync)."""
    folder = data_dir / CONVERSATIONS_DIR
    folder.mkdir(parents=True)
    for n in range(count):
        record = make_conversation(n)
        (folder / f"{record['id']}.json").write_bytes(encode_json(record))


def timed(fn, repeats: int) -> list[float]:
    """Seconds each of `repeats` calls of `fn` took."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def measure(count: int, repeats: int) -> dict[str, float]:
    """Median times for one store of `count` conversations."""
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        data_dir = Path(tmp)
        fill(data_dir, count)
        started = time.perf_counter()
        store = Store(data_dir)
        first_start = time.perf_counter() - started
        store.close()
        started = time.perf_counter()
        store = Store(data_dir)
        start = time.perf_counter() - started
        record = make_conversation(count + 1)
        store.conversations.save(record)
        save = timed(lambda: store.conversations.save(record), repeats)
        page = timed(lambda: store.conversations.list(OWNER, "", 0, 40), repeats)
        search = timed(lambda: store.conversations.list(OWNER, "question 7 of conversation 3", 0, 40), SEARCHES)
        store.close()
    return {"first_start": first_start, "start": start, "save": statistics.median(save),
            "list": statistics.median(page), "search": statistics.median(search)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="saves and list reads per size (median)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {count: measure(count, args.repeats) for count in SIZES}
    print(f"Store, conversations of 20 messages ({time.strftime('%Y-%m-%d')}): saves and first pages median of "
          f"{args.repeats}, searches median of {SEARCHES}, starts one each:\n")
    print("| Conversations | Save one | List first page | Search message text | Start (index) | First start |")
    print("|---|---|---|---|---|---|")
    for count, r in results.items():
        print(f"| {count:,} | {r['save'] * 1e3:.2f} ms | {r['list'] * 1e3:.2f} ms | {r['search'] * 1e3:.0f} ms "
              f"| {r['start'] * 1e3:.0f} ms | {r['first_start'] * 1e3:.0f} ms |")
    ratio = results[1_000]["save"] / results[10]["save"]
    verdict = "met" if ratio <= SAVE_RATIO_GOAL else "MISSED"
    print(f"\nsave ratio 1000/10: {ratio:.2f} (goal ≤ {SAVE_RATIO_GOAL}: {verdict})")


if __name__ == "__main__":
    main()
