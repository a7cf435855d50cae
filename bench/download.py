"""Download and search speed against the Hub served on 127.0.0.1: the app vs huggingface_hub's own download.

Run `python bench/download.py`. Two repositories are served by `mlx_gradio.local_hub`: the demo
model (one 115 MB weight file, real) and four 64 MB shards of random bytes. Each is downloaded
into a fresh cache by the app (`Downloads`, with its progress hook, polled like the UI does), by
huggingface_hub's `snapshot_download` (what `hf download` runs) and by the `hf download` command
itself, `--repeats` times each, the order rotated from one repeat to the next; the table gives
median MB/s. Then search:
one page of results, its time and the number of requests the Hub saw. Last, the demo model's
decode speed while nothing downloads, while `snapshot_download` downloads and while the app
downloads (the Hub at 10 MB/s, downloading again and again until the reply is done): the app's
progress hooks must cost the chat nothing more than the download itself does. The Hub sends `--mbps`
per connection (40 MB/s by default, a fast home line; 0 for as fast as this machine can).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chat import engine_rate  # noqa: E402 - bench/chat.py, beside this file
from report import Row, print_table  # noqa: E402

from mlx_gradio.engine.thread import Engine  # noqa: E402
from mlx_gradio.hub.downloads import Downloads  # noqa: E402
from mlx_gradio.hub.search import HubService  # noqa: E402
from mlx_gradio.models.demo import prepare_demo_model  # noqa: E402
from mlx_gradio.store import Store  # noqa: E402
from mlx_gradio.testing.local_hub import HubRepo, LocalHub, repo_from_folder  # noqa: E402

log = logging.getLogger("bench.download")
DEMO = "mlx-community/SmolLM2-135M-Instruct-4bit"
SHARDS = "bench/four-shards-4bit"


def shards_repo() -> HubRepo:
    """Four 64 MB weight files and a config: a model in several shards."""
    size = 64 * 1024 * 1024
    header = json.dumps({"weight": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    shard = len(header).to_bytes(8, "little") + header
    files = {f"model-0000{i}-of-00004.safetensors": shard + os.urandom(size) for i in range(1, 5)}
    return HubRepo(SHARDS, {"config.json": b'{"model_type": "llama"}', **files})


def app_seconds(hub: LocalHub, repo_id: str, cache: Path, poll: float = 0.02) -> float:
    """The app's download, its progress read every `poll` seconds (the page reads it once a second)."""
    downloads = Downloads(cache, hub.url, Store(cache.parent / f"{cache.name}-data").downloads)
    details = HubService(hub.url).details(repo_id)
    started = time.perf_counter()
    downloads.start(details)
    while (progress := downloads.get(repo_id)).active:
        time.sleep(poll)
    elapsed = time.perf_counter() - started
    downloads.shutdown()
    if progress.state != "done":
        raise RuntimeError(f"the app's download failed: {progress.message}")
    return elapsed


def library_seconds(hub: LocalHub, repo_id: str, cache: Path) -> float:
    from huggingface_hub import snapshot_download

    started = time.perf_counter()
    snapshot_download(repo_id, cache_dir=cache, endpoint=hub.url)
    return time.perf_counter() - started


def cli_seconds(hub: LocalHub, repo_id: str, cache: Path) -> float:
    hf = Path(sys.executable).with_name("hf")
    started = time.perf_counter()
    subprocess.run([str(hf), "download", repo_id, "--cache-dir", str(cache)], check=True,
                   env={**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def decode_while(engine: Engine, model: Path, hub: LocalHub, fetch, run: int) -> float:
    """Decode speed of one reply while `fetch` downloads the demo model over and over (None: idle)."""
    done = threading.Event()

    def keep_downloading() -> None:
        while not done.is_set():
            with tempfile.TemporaryDirectory() as cache:
                fetch(hub, DEMO, Path(cache))

    worker = threading.Thread(target=keep_downloading, daemon=True) if fetch else None
    if worker:
        worker.start()
        time.sleep(1.0)  # the download is under way
    try:
        return engine_rate(engine, model, run)
    finally:
        done.set()
        if worker:
            worker.join()


def rotated(names: list[str], run: int) -> list[str]:
    """`names` starting at a different one each run."""
    return names[run % len(names):] + names[:run % len(names)]


def search_row(hub: LocalHub) -> tuple[float, int]:
    """Milliseconds and Hub requests for the first page of a fresh search."""
    service = HubService(hub.url)
    service.search("")  # the first call also probes the Hub once
    before = len(hub.requests)
    started = time.perf_counter()
    service.search("model")
    return (time.perf_counter() - started) * 1000, len(hub.requests) - before


def download_speeds(hub: LocalHub, repeats: int, mbps: float) -> None:
    """The table of download speeds: the app, `snapshot_download` and `hf download`, order rotated."""
    hub.faults.bytes_per_second = mbps * 1e6
    ways = {"the app (Downloads)": app_seconds, "`snapshot_download`": library_seconds,
            "`hf download` (CLI, with its start-up)": cli_seconds}
    rows = []
    for repo_id in (DEMO, SHARDS):
        size = sum(len(d) for d in hub.repos[repo_id].files.values())
        rates: dict[str, list[float]] = {w: [] for w in ways}
        for run in range(repeats):
            for way in rotated(list(ways), run):  # so drift in the machine's speed hits all alike
                with tempfile.TemporaryDirectory() as cache:
                    rates[way].append(size / 1e6 / ways[way](hub, repo_id, Path(cache)))
        library = Row(f"{repo_id} ({size / 1e6:.0f} MB), `snapshot_download`", rates["`snapshot_download`"],
                      " MB/s", 0, baseline=True)
        rows += [library,
                 Row(f"{repo_id}, the app", rates["the app (Downloads)"], " MB/s", 0, compared_with=library,
                     goal="≥ 0.9"),
                 Row(f"{repo_id}, `hf download` (CLI, with its start-up)",
                     rates["`hf download` (CLI, with its start-up)"], " MB/s", 0, compared_with=library)]
    speed = f"{mbps:g} MB/s per connection" if mbps else "as fast as it can"
    print_table(f"Downloads from the Hub on 127.0.0.1 (sending {speed}), order rotated", rows)


def decode_while_downloading(hub: LocalHub, demo: Path, repeats: int) -> None:
    """The table of the demo model's decode speed while nothing, `snapshot_download` or the app downloads."""
    hub.faults.bytes_per_second = 10e6
    engine = Engine()
    engine.load(str(demo)).result()
    engine_rate(engine, demo, 0)  # warm-up
    during = {"nothing": None, "`snapshot_download`": library_seconds,
              "the app (Downloads), its progress read once a second": lambda *a: app_seconds(*a, poll=1.0)}
    decode = {name: [] for name in during}
    for run in range(repeats):
        for name in rotated(list(during), run):
            decode[name].append(decode_while(engine, demo, hub, during[name], run))
    engine.shutdown()
    idle = Row("Decode while nothing downloads", decode["nothing"], " tok/s", baseline=True)
    library = Row("Decode while `snapshot_download` downloads", decode["`snapshot_download`"], " tok/s",
                  compared_with=idle)
    print_table("The demo model's decode speed while the same model downloads again and again at 10 MB/s", [
        idle, library,
        Row("Decode while the app downloads (progress read once a second)",
            decode["the app (Downloads), its progress read once a second"], " tok/s", compared_with=idle),
        Row("The same, compared with `snapshot_download`'s",
            decode["the app (Downloads), its progress read once a second"], " tok/s", compared_with=library,
            goal="≥ 0.98"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "mlx-gradio-bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mbps", type=float, default=40.0,
                        help="the Hub's speed per connection in MB/s, like a fast home line (0: as fast as it goes)")
    parser.add_argument("--only", choices=("speed", "decode"), help="run one of the two tables")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    demo = prepare_demo_model(args.data_dir)
    hub = LocalHub([repo_from_folder(DEMO, demo), shards_repo()])
    for i in range(60):  # enough results for a full page
        hub.add(HubRepo(f"mlx-community/model-{i:02d}-4bit", {"config.json": b"{}"}, downloads=i))
    if args.only != "decode":
        download_speeds(hub, args.repeats, args.mbps)
    if args.only != "speed":
        decode_while_downloading(hub, demo, args.repeats)
    ms, requests = search_row(hub)
    print(f"search: one page of 20 in {ms:.1f} ms, {requests} request(s) to the Hub")
    hub.close()


if __name__ == "__main__":
    main()
