"""Model downloads from the Hub into the shared Hugging Face cache, on background threads.

Each download is one `snapshot_download` of the files a model needs, on a thread of its own
(never a Gradio handler thread, never the engine thread). Progress comes from the download
itself: a `tqdm_class` whose `update` only adds to a counter and checks for Cancel, so a 2-core
machine keeps generating at full speed. Network trouble is retried with backoff; what was
fetched stays in huggingface_hub's `.incomplete` files, so Resume (now or after a restart)
continues where it stopped. At the end every file's size is checked against what the Hub
announced.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from huggingface_hub.utils import tqdm as hf_tqdm

from ..errors import AppError, DownloadFailed, DownloadInProgress, HubRateLimited, HubUnreachable, NotEnoughSpace
from .search import ModelDetails, hub_error

log = logging.getLogger(__name__)

QUEUED, DOWNLOADING, CANCELLING, DONE = "queued", "downloading", "cancelling", "done"
FAILED, CANCELLED, INTERRUPTED = "failed", "cancelled", "interrupted"
ACTIVE = (QUEUED, DOWNLOADING, CANCELLING)
RETRY_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0)  # seconds between attempts after a network failure
SPACE_MARGIN = 50 * 1024 * 1024  # free space to leave besides the download itself
SPEED_WINDOW = 5.0  # seconds of progress the speed is averaged over
FILES_AT_ONCE = 4  # files of one model fetched in parallel
COUNTED_BARS = ("huggingface_hub.http_get", "huggingface_hub.snapshot_download")  # bars of bytes written


@dataclass(frozen=True)
class DownloadProgress:
    """What a download shows: bytes done of total, speed, time left, and how it ended."""

    repo_id: str
    revision: str
    state: str
    done_bytes: int
    total_bytes: int
    bytes_per_second: float = 0.0
    message: str = ""
    path: str = ""  # the snapshot folder, once done

    @property
    def fraction(self) -> float:
        return min(1.0, self.done_bytes / self.total_bytes) if self.total_bytes else 0.0

    @property
    def seconds_left(self) -> float | None:
        if self.state != DOWNLOADING or self.bytes_per_second <= 0:
            return None
        return max(0.0, self.total_bytes - self.done_bytes) / self.bytes_per_second

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def record(self) -> dict:
        """What the store keeps of it, so a restart can list it and resume it."""
        return {"repo_id": self.repo_id, "revision": self.revision, "state": self.state,
                "done_bytes": self.done_bytes, "total_bytes": self.total_bytes, "message": self.message}


class DownloadCancelled(Exception):
    """Raised inside huggingface_hub's download threads (from a progress update) to stop them."""


class Tracker:
    """One download's counters, written by huggingface_hub's threads and read by the UI."""

    def __init__(self, progress: DownloadProgress) -> None:
        self._lock = threading.Lock()
        self._progress = progress
        self._samples: deque[tuple[float, int]] = deque(maxlen=64)
        self.cancel = threading.Event()

    def add(self, n: int) -> None:
        """Bytes written (negative when a restarted file throws away what it had)."""
        with self._lock:
            self._progress = replace(self._progress, done_bytes=self._progress.done_bytes + n)

    def set(self, **changes) -> DownloadProgress:
        with self._lock:
            self._progress = replace(self._progress, **changes)
            return self._progress

    def snapshot(self) -> DownloadProgress:
        """The progress now, with the speed over the last few seconds (computed here, not in the hook)."""
        now = time.monotonic()
        with self._lock:
            progress = self._progress
            self._samples.append((now, progress.done_bytes))
            while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW:
                self._samples.popleft()
            (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        speed = (b1 - b0) / (t1 - t0) if t1 - t0 >= 0.5 and progress.state == DOWNLOADING else 0.0
        return replace(progress, bytes_per_second=max(0.0, speed))


def progress_bar_class(tracker: Tracker) -> type[hf_tqdm]:
    """A tqdm class for `snapshot_download` that feeds `tracker` and never draws anything."""

    class ProgressBar(hf_tqdm):
        def __init__(self, *args, **kwargs) -> None:
            self.counts_bytes = kwargs.get("name") in COUNTED_BARS
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            if self.counts_bytes and kwargs.get("initial"):
                tracker.add(int(kwargs["initial"]))  # a resumed file's bytes already on disk

        def update(self, n: float | None = 1) -> bool | None:
            if tracker.cancel.is_set():
                raise DownloadCancelled
            if self.counts_bytes and n:
                self.n += n
                tracker.add(int(n))
            return None

    return ProgressBar


class Retryable(DownloadFailed):
    """A failure worth another attempt (connection lost, Hub briefly down)."""


class DownloadRecords(Protocol):
    """Where unfinished downloads are kept between runs (the store)."""

    def all(self) -> list[dict]: ...

    def save(self, record: dict) -> None: ...

    def remove(self, repo_id: str) -> None: ...


class Downloads:
    """Downloads into one Hugging Face cache: start, cancel, list, resume after a restart.

    `records` keeps what must outlive the process (one dict per unfinished download).
    """

    def __init__(self, cache_dir: str | Path, endpoint: str, records: DownloadRecords,
                 retry_delays: Sequence[float] = RETRY_DELAYS, max_parallel: int = 3) -> None:
        self.cache_dir = Path(cache_dir)
        self.endpoint = endpoint
        self.records = records
        self.retry_delays = tuple(retry_delays)
        self._lock = threading.Lock()
        self._trackers: dict[str, Tracker] = {}
        self._threads = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="download")
        self._closing = False
        for saved in records.all():
            try:
                progress = DownloadProgress(str(saved["repo_id"]), str(saved.get("revision", "")),
                                            INTERRUPTED if saved.get("state") in ACTIVE else str(saved["state"]),
                                            int(saved.get("done_bytes", 0)), int(saved.get("total_bytes", 0)),
                                            message=str(saved.get("message", "")))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("Skipping an unreadable download record %r: %s", saved, exc)
                continue
            self._trackers[progress.repo_id] = Tracker(progress)

    def list(self) -> list[DownloadProgress]:
        """Every download of this run and every unfinished one from before, newest first."""
        with self._lock:
            trackers = list(self._trackers.values())
        return [t.snapshot() for t in reversed(trackers)]

    def get(self, repo_id: str) -> DownloadProgress | None:
        with self._lock:
            tracker = self._trackers.get(repo_id)
        return tracker.snapshot() if tracker else None

    def start(self, details: ModelDetails) -> DownloadProgress:
        """Queue the download of a model's needed files (resuming what an earlier one fetched)."""
        needed = {f.path: f.size for f in details.files if f.needed}
        already = self.complete_bytes(details.repo_id, details.sha, needed)
        self.check_space(sum(needed.values()) - already - self.partial_bytes(details.repo_id))
        with self._lock:
            current = self._trackers.get(details.repo_id)
            if current is not None and current.snapshot().active:
                raise DownloadInProgress(f"{details.repo_id} is already downloading.")
            tracker = Tracker(DownloadProgress(details.repo_id, details.sha, QUEUED, already, sum(needed.values())))
            self._trackers.pop(details.repo_id, None)
            self._trackers[details.repo_id] = tracker
        self._save(tracker.snapshot())
        self._threads.submit(self._run, tracker, needed)
        log.info("Download of %s queued (%d files, %d bytes)", details.repo_id, len(needed), sum(needed.values()))
        return tracker.snapshot()

    def cancel(self, repo_id: str) -> DownloadProgress:
        """Stop a download; what it fetched stays in the cache for a later Resume."""
        with self._lock:
            tracker = self._trackers.get(repo_id)
        if tracker is None or not tracker.snapshot().active:
            raise DownloadFailed(f"{repo_id} is not downloading.")
        tracker.cancel.set()
        return tracker.set(state=CANCELLING, message="Stopping…")

    def forget(self, repo_id: str) -> None:
        """Remove a finished, failed or cancelled download from the list (its files stay where they are)."""
        with self._lock:
            tracker = self._trackers.get(repo_id)
            if tracker is None:
                return
            if tracker.snapshot().active:
                raise DownloadInProgress(f"{repo_id} is still downloading; cancel it first.")
            del self._trackers[repo_id]
        self.records.remove(repo_id)

    def shutdown(self) -> None:
        """Stop every download; they are listed as interrupted at the next start."""
        self._closing = True
        with self._lock:
            trackers = list(self._trackers.values())
        for tracker in trackers:
            if tracker.snapshot().active:
                tracker.cancel.set()
                self._save(replace(tracker.snapshot(), state=INTERRUPTED))
        self._threads.shutdown(wait=True)

    # --- checks -----------------------------------------------------------------------------

    def check_space(self, needed: int) -> None:
        """Raise `NotEnoughSpace` if the cache's disk cannot take `needed` more bytes."""
        folder = self.cache_dir
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if needed + SPACE_MARGIN > free:
            raise NotEnoughSpace(f"This download needs {needed / 1e9:.2f} GB but {self.cache_dir} has only "
                                 f"{free / 1e9:.2f} GB free.")

    def repo_folder(self, repo_id: str) -> Path:
        """Where the cache keeps a repository."""
        return self.cache_dir / f"models--{repo_id.replace('/', '--')}"

    def complete_bytes(self, repo_id: str, revision: str, needed: dict[str, int]) -> int:
        """Bytes of the needed files already complete in the cache."""
        snapshot = self.repo_folder(repo_id) / "snapshots" / revision
        return sum(size for name, size in needed.items() if (snapshot / name).is_file())

    def partial_bytes(self, repo_id: str) -> int:
        """Bytes already in this repository's `.incomplete` files (a Resume does not fetch them again)."""
        blobs = self.repo_folder(repo_id) / "blobs"
        return sum(p.stat().st_size for p in blobs.glob("*.incomplete")) if blobs.is_dir() else 0

    # --- the download thread ----------------------------------------------------------------

    def _run(self, tracker: Tracker, needed: dict[str, int]) -> None:
        progress = tracker.snapshot()
        if tracker.cancel.is_set():
            self._stopped(tracker)
            return
        tracker.set(state=DOWNLOADING, message="")
        self._save(tracker.snapshot())
        attempts = iter(self.retry_delays)
        while True:
            try:
                path = self._fetch(progress.repo_id, progress.revision, needed, tracker)
                self._verify(Path(path), needed)
            except DownloadCancelled:
                self._stopped(tracker)
                return
            except Exception as exc:  # noqa: BLE001 - every failure ends in a state the user sees
                error = self._classify(exc, progress.repo_id)
                delay = next(attempts, None) if isinstance(error, Retryable) else None
                if delay is None:
                    log.warning("Download of %s failed: %s", progress.repo_id, error)
                    self._finish(tracker, FAILED, str(error))
                    return
                log.warning("Download of %s: %s Trying again in %.1f s", progress.repo_id, error, delay)
                tracker.set(message=f"{error} Trying again in {delay:.0f} s…")
                if tracker.cancel.wait(delay):
                    self._stopped(tracker)
                    return
                tracker.set(message="")
                continue
            tracker.set(done_bytes=tracker.snapshot().total_bytes)
            self._finish(tracker, DONE, "", str(path))
            log.info("Downloaded %s into %s", progress.repo_id, path)
            return

    def _fetch(self, repo_id: str, revision: str, needed: dict[str, int], tracker: Tracker) -> str:
        """Fetch every needed file into the cache's blobs, resumably, then let `snapshot_download` link them."""
        from huggingface_hub import snapshot_download

        tracker.set(done_bytes=0)
        snapshot = self.repo_folder(repo_id) / "snapshots" / revision
        missing = []
        for name, size in needed.items():
            if (snapshot / name).is_file():
                tracker.add(size)
            else:
                missing.append(name)
        with ThreadPoolExecutor(max_workers=FILES_AT_ONCE, thread_name_prefix="download-file") as files:
            for job in [files.submit(self._fetch_file, repo_id, revision, name, tracker) for name in missing]:
                job.result()
        # Every blob is in place now: this only writes the snapshot's links and the refs.
        return snapshot_download(repo_id, revision=revision or None, cache_dir=self.cache_dir, endpoint=self.endpoint,
                                 allow_patterns=list(needed), tqdm_class=progress_bar_class(tracker))

    def _fetch_file(self, repo_id: str, revision: str, name: str, tracker: Tracker) -> None:
        """One file into `blobs/<etag>`, continuing a `<etag>.incomplete` left by an earlier attempt.

        huggingface_hub 2.x deletes its partial files when a download stops, so resuming is done
        here, with its own `http_get` (retries, Range, size check, progress through `tqdm_class`).
        """
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        if tracker.cancel.is_set():
            raise DownloadCancelled
        url = hf_hub_url(repo_id, name, revision=revision or None, endpoint=self.endpoint)
        meta = get_hf_file_metadata(url, endpoint=self.endpoint)
        blobs = self.repo_folder(repo_id) / "blobs"
        blob = blobs / str(meta.etag)
        if blob.is_file() and blob.stat().st_size == meta.size:
            tracker.add(meta.size or 0)
            return
        blobs.mkdir(parents=True, exist_ok=True)
        partial = blobs / f"{meta.etag}.incomplete"
        with open(partial, "ab") as f:
            http_get(meta.location, f, resume_size=f.tell(), headers=build_hf_headers(), expected_size=meta.size,
                     displayed_filename=name, tqdm_class=progress_bar_class(tracker))
        os.replace(partial, blob)

    def _verify(self, snapshot: Path, needed: dict[str, int]) -> None:
        """Every file is there with the size the Hub announced; a wrong one is removed, never kept."""
        for name, size in needed.items():
            path = snapshot / name
            actual = path.stat().st_size if path.exists() else -1
            if actual == size:
                continue
            blob = path.resolve() if path.is_symlink() else None
            path.unlink(missing_ok=True)
            if blob is not None:
                blob.unlink(missing_ok=True)
            got = "is missing" if actual < 0 else f"arrived with {actual:,} bytes"
            raise DownloadFailed(f"{name} {got} but the Hub announced {size:,} bytes; the broken file was "
                                 "removed, so Resume fetches it again.")

    def _classify(self, exc: Exception, repo_id: str) -> AppError:
        """The error a failed attempt means: `Retryable` for network trouble, else final."""
        if isinstance(exc, AppError):
            return exc
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return NotEnoughSpace(f"The disk of {self.cache_dir} filled up during the download; what was "
                                  "fetched is kept, so Resume continues once there is room.")
        mapped = hub_error(exc, f"download {repo_id}")
        if mapped is not None:
            return Retryable(str(mapped)) if isinstance(mapped, (HubUnreachable, HubRateLimited)) else mapped
        if isinstance(exc, OSError):  # huggingface_hub's size check after a cut connection, a reset socket
            return Retryable(f"The download was cut off ({exc}).")
        log.exception("Unexpected failure downloading %s", repo_id)
        return DownloadFailed(f"The download failed: {type(exc).__name__}: {exc}")

    def _stopped(self, tracker: Tracker) -> None:
        """Cancelled by the owner, or interrupted because the app is quitting."""
        if self._closing:
            self._finish(tracker, INTERRUPTED, "Interrupted when the app quit; Resume continues where it stopped.")
        else:
            self._finish(tracker, CANCELLED, "Cancelled; Resume continues where it stopped.")

    def _finish(self, tracker: Tracker, state: str, message: str, path: str = "") -> None:
        progress = tracker.set(state=state, message=message, path=path)
        if state == DONE:
            self.records.remove(progress.repo_id)
        else:
            self._save(progress)

    def _save(self, progress: DownloadProgress) -> None:
        try:
            self.records.save(progress.record())
        except AppError as exc:  # the download goes on; only a restart would not list it
            log.error("Could not record the download of %s: %s", progress.repo_id, exc)


