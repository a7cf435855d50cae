"""A small Hugging Face Hub served on 127.0.0.1, for tests and benchmarks on a machine without the Hub.

It speaks what the real `huggingface_hub` client calls: model search (`/api/models` with
`search`, `author`, `filter`, `sort`, `limit`, `expand`), model info (`/api/models/{id}` and
`/revision/{rev}`, `blobs=true`), the file tree (`/api/models/{id}/tree/{rev}`), and files
(`/{id}/resolve/{rev}/{file}`: HEAD and GET with `ETag`, `X-Repo-Commit`, `Content-Length`
and `Range`). Repositories hold real files; a test can make one gated, slow a download down,
drop a connection halfway through a file once, fail the next few file requests, serve a file
that differs from its listing, or take the whole Hub down.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

log = logging.getLogger(__name__)

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pth", ".npz")


@dataclass
class HubRepo:
    """One model repository: its files and the facts the Hub reports about it."""

    repo_id: str
    files: dict[str, bytes]
    downloads: int = 0
    likes: int = 0
    last_modified: str = "2026-11-01T12:00:00.000Z"
    tags: list[str] = field(default_factory=lambda: ["mlx", "safetensors"])
    pipeline_tag: str = "text-generation"
    gated: bool = False
    card: str = ""
    _entries: dict = field(default_factory=dict, repr=False)  # path -> (content, entry): hashed once per content

    @property
    def sha(self) -> str:
        """The commit: a hash of every file, so new content means a new commit."""
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + self.entry(name)["oid"].encode())
        return digest.hexdigest()

    @property
    def config(self) -> dict:
        """The repository's config.json, if it has one."""
        try:
            return json.loads(self.files.get("config.json", b"{}"))
        except ValueError:
            return {}

    def entry(self, path: str) -> dict:
        """A file as the tree listing shows it (hashed once: hashing 100 MB on every request would make this
        Hub, not the client, the thing a benchmark measures)."""
        data = self.files[path]
        cached = self._entries.get(path)
        if cached and cached[0] is data:
            return cached[1]
        entry = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        if path.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        self._entries[path] = (data, entry)
        return entry

    def etag(self, path: str) -> str:
        """What the Hub sends as the file's ETag: its sha256 for LFS files, its git oid otherwise."""
        entry = self.entry(path)
        return entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]

    def summary(self, expand: list[str]) -> dict:
        """The repository in a search result, with the fields `expand` asks for."""
        fields = {
            "author": self.repo_id.split("/")[0], "downloads": self.downloads, "likes": self.likes,
            "lastModified": self.last_modified, "tags": self.tags, "pipeline_tag": self.pipeline_tag,
            "library_name": "mlx", "gated": "manual" if self.gated else False, "private": False, "sha": self.sha,
            "usedStorage": sum(len(d) for d in self.files.values()),
            "config": {k: v for k, v in self.config.items() if k in ("architectures", "model_type")},
            "safetensors": self.safetensors(),
        }
        base = {"id": self.repo_id, "_id": hashlib.md5(self.repo_id.encode()).hexdigest()[:24], "modelId": self.repo_id}
        chosen = expand or ["downloads", "likes", "lastModified", "tags", "pipeline_tag", "library_name", "private"]
        return {**base, **{k: fields[k] for k in chosen if k in fields and fields[k] is not None}}

    def safetensors(self) -> dict | None:
        """Parameter counts by type, read from the safetensors headers, as the Hub reports them."""
        counts: dict[str, int] = {}
        for name, data in self.files.items():
            if not name.endswith(".safetensors") or len(data) < 8:
                continue
            length = int.from_bytes(data[:8], "little")
            header = json.loads(data[8: 8 + length])
            for tensor, info in header.items():
                if tensor != "__metadata__":
                    size = 1
                    for dim in info["shape"]:
                        size *= dim
                    counts[info["dtype"]] = counts.get(info["dtype"], 0) + size
        return {"parameters": counts, "total": sum(counts.values())} if counts else None

    def info(self, blobs: bool) -> dict:
        """The repository's full model info."""
        siblings = []
        for path in sorted(self.files):
            sibling = {"rfilename": path}
            if blobs:
                entry = self.entry(path)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    sibling["lfs"] = {"sha256": entry["lfs"]["oid"], "size": entry["size"], "pointerSize": 134}
            siblings.append(sibling)
        card = {"cardData": {"library_name": "mlx"}} if self.card else {}
        return {**self.summary(["author", "downloads", "likes", "lastModified", "tags", "pipeline_tag",
                                "library_name", "gated", "private", "sha", "usedStorage", "safetensors"]),
                "config": self.config, "siblings": siblings, "createdAt": self.last_modified, **card}


@dataclass
class Faults:
    """Trouble a test can cause on purpose."""

    down: bool = False  # every request answers 503
    bytes_per_second: float = 0.0  # throttle file downloads (0: as fast as possible)
    drop_after: dict[str, int] = field(default_factory=dict)  # file path -> close the connection after N bytes, once
    fail_next: int = 0  # the next N file requests answer 503
    replace: dict[str, bytes] = field(default_factory=dict)  # file path -> other content than the listing announces


class LocalHub:
    """The Hub on a free port of 127.0.0.1, in a background thread; `requests` counts what it served."""

    def __init__(self, repos: list[HubRepo] | None = None, token: str = "hf_local_test_token", port: int = 0) -> None:
        self.repos = {repo.repo_id: repo for repo in repos or []}
        self.token = token
        self.faults = Faults()
        self.requests: list[str] = []
        self.bytes_sent = 0  # file bytes served, to tell a resumed download from a fresh one
        self.sending: dict[str, int] = {}  # repository -> file bodies being sent right now
        self.most_repos_at_once = 0  # the most repositories whose files were being sent at the same moment
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Where the Hub answers (what `HF_ENDPOINT` should be)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo: HubRepo) -> HubRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def count(self, prefix: str) -> int:
        """How many requests so far started with `prefix` (e.g. "GET /api/models?")."""
        with self._lock:
            return sum(1 for line in self.requests if line.startswith(prefix))

    def record(self, line: str) -> None:
        with self._lock:
            self.requests.append(line)

    def sent(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def sending_body(self, repo_id: str, delta: int) -> None:
        """A file body of `repo_id` starts (+1) or ends (-1); keeps `most_repos_at_once`."""
        with self._lock:
            self.sending[repo_id] = self.sending.get(repo_id, 0) + delta
            self.most_repos_at_once = max(self.most_repos_at_once, sum(1 for n in self.sending.values() if n > 0))

    def take_failure(self) -> bool:
        """Whether this file request should fail (one of `faults.fail_next`)."""
        with self._lock:
            if self.faults.fail_next <= 0:
                return False
            self.faults.fail_next -= 1
            return True

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def repo_from_folder(repo_id: str, folder: Path, **facts) -> HubRepo:
    """A repository holding every file of a local model folder."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return HubRepo(repo_id, files, **facts)


SORT_KEYS = {"downloads": lambda r: r.downloads, "likes": lambda r: r.likes,
             "lastModified": lambda r: r.last_modified, "trendingScore": lambda r: r.downloads}
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")


def _handler_for(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `hub`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
            log.debug("local hub: " + format, *args)

        def do_HEAD(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
            self.route(head=True)

        def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
            self.route(head=False)

        # --- routing ------------------------------------------------------------------------

        def route(self, head: bool) -> None:
            url = urlparse(self.path)
            hub.record(f"{self.command} {self.path}")
            if hub.faults.down:
                return self.error(503, "ServiceUnavailable", "The Hub is down for maintenance.")
            query = parse_qs(url.query)
            path = unquote(url.path)
            if path == "/api/models":
                return self.search(query)
            if path == "/api/whoami-v2":
                return self.whoami()
            if match := TREE.match(path):
                return self.with_repo(match["repo"], lambda repo: self.json(
                    [repo.entry(p) for p in sorted(repo.files)
                     if not match["path"] or p.startswith(match["path"].rstrip("/") + "/")]))
            if match := INFO.match(path):
                return self.with_repo(match["repo"], lambda repo: self.json(repo.info("blobs" in query)))
            if match := RESOLVE.match(path):
                return self.with_repo(match["repo"], lambda repo: self.file(repo, match["path"], head), files=True)
            return self.error(404, "EntryNotFound", f"{path} does not exist on this Hub.")

        def with_repo(self, repo_id: str, answer, files: bool = False) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self.error(404, "RepoNotFound", f"Repository {repo_id} not found.")
            if repo.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self.error(401 if files else 403, "GatedRepo",
                                  f"Access to model {repo_id} is restricted. You must have access to it "
                                  "and be authenticated to access it.")
            return answer(repo)

        # --- answers ------------------------------------------------------------------------

        def search(self, query: dict) -> None:
            found = [r for r in hub.repos.values() if "mlx" in r.tags or not query.get("filter")]
            for wanted in query.get("filter", []):
                found = [r for r in found if wanted in r.tags]
            if search := query.get("search", [""])[0].lower():
                found = [r for r in found if search in r.repo_id.lower()]
            if author := query.get("author", [""])[0]:
                found = [r for r in found if r.repo_id.split("/")[0] == author]
            if pipeline := query.get("pipeline_tag", [""])[0]:
                found = [r for r in found if r.pipeline_tag == pipeline]
            sort = query.get("sort", [""])[0]
            if sort in SORT_KEYS:
                found.sort(key=SORT_KEYS[sort], reverse=True)
            limit = int(query.get("limit", ["1000"])[0])
            expand = query.get("expand", []) + query.get("expand[]", [])
            self.json([repo.summary(expand) for repo in found[:limit]])

        def whoami(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self.error(401, "Unauthorized", "Invalid credentials in Authorization header")
            self.json({"type": "user", "name": "local-tester", "fullname": "Local Tester",
                       "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "read"}}})

        def file(self, repo: HubRepo, path: str, head: bool) -> None:
            if path not in repo.files:
                return self.error(404, "EntryNotFound", f"{path} does not exist in {repo.repo_id}.")
            if hub.take_failure():
                return self.error(503, "ServiceUnavailable", "Try again later.")
            data = hub.faults.replace.get(path, repo.files[path])
            start = 0
            ranged = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if ranged and not head:
                start = int(ranged[1])
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{repo.etag(path)}"')
            self.send_header("X-Repo-Commit", repo.sha)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not head:
                hub.sending_body(repo.repo_id, +1)
                try:
                    self.send_body(path, body)
                finally:
                    hub.sending_body(repo.repo_id, -1)

        def send_body(self, path: str, body: bytes) -> None:
            drop = hub.faults.drop_after.pop(path, None)
            chunk = 64 * 1024
            started, sent = time.monotonic(), 0
            for offset in range(0, len(body), chunk):
                if drop is not None and sent >= drop:
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection drops halfway through the file
                    return
                piece = body[offset: offset + chunk]
                try:
                    self.wfile.write(piece)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(piece)
                hub.sent(len(piece))
                if hub.faults.bytes_per_second:
                    ahead = sent / hub.faults.bytes_per_second - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)

        def json(self, value) -> None:
            body = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler
