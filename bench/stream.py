"""Streaming cost per update: a text conversation vs one holding large photos.

Run `python bench/stream.py`. Every update of a streaming reply sends the whole chat through
Gradio's output processing (`Chatbot.postprocess`, then the cache step twice: once for the
page's state, once for the output). A photo referenced by its own path is hashed again at each
of those steps; the app hands Gradio a copy already in its cache, made once. The table times one
update for a text chat, for the same chat with photos as the app shows them, and with the photos
referenced by path (what the app did before).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlx_gradio.chats import chat  # noqa: E402
from mlx_gradio.ui import render  # noqa: E402

PHOTOS = 4
PHOTO_SIZE = (4000, 3000)  # 12 megapixels


def make_photos(folder: Path) -> list[str]:
    """Large JPEG photos (random pixels, so they compress badly, like real ones)."""
    import numpy as np
    from PIL import Image

    paths = []
    rng = np.random.default_rng(0)
    for n in range(PHOTOS):
        pixels = rng.integers(0, 255, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3), dtype=np.uint8)
        path = folder / f"photo-{n}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def conversation(images: list[str]) -> dict:
    """Five turns and a reply being written; the photos go with the first message."""
    record = chat.new_conversation("bench")
    for turn in range(5):
        chat.add_user_message(record, f"Question {turn}: what is in the picture?", images if turn == 0 else [])
        chat.add_reply_version(record, len(record["messages"]), "A long answer. " * 40, None, "/models/m")
    return record


def update_time(chatbot, messages: list[dict], repeats: int) -> float:
    """Median seconds Gradio spends on one streamed update of `messages`."""
    from gradio import processing_utils

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        value = chatbot.postprocess(messages).model_dump()
        for _step in ("state", "output"):
            processing_utils.move_files_to_cache(value, chatbot, postprocess=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    import gradio as gr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp, gr.Blocks():
        chatbot = gr.Chatbot()
        photos = make_photos(Path(tmp))
        megabytes = sum(Path(p).stat().st_size for p in photos) / 1e6
        text_chat = render.chatbot_messages(conversation([]))
        photo_chat = render.chatbot_messages(conversation(photos))  # copies in Gradio's cache, made once
        by_path = [{**m, "content": [{"path": p} for p in photos] + [m["content"][-1]]} if i == 0 else m
                   for i, m in enumerate(photo_chat)]
        rows = [("Text conversation", update_time(chatbot, text_chat, args.repeats)),
                (f"{PHOTOS} photos ({megabytes:.0f} MB), as the app shows them", update_time(chatbot, photo_chat,
                                                                                            args.repeats)),
                (f"{PHOTOS} photos, referenced by path (before)", update_time(chatbot, by_path, args.repeats))]
    base = rows[0][1]
    print(f"One streamed update of a 10-message chat, median of {args.repeats} ({time.strftime('%Y-%m-%d')}):\n")
    print("| Chat | Time per update | Ratio to text |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e3:.2f} ms | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
