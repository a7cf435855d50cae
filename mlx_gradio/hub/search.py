"""The Hugging Face Hub: search MLX models and read one model's details, through huggingface_hub.

One page of search results is one `list_models` request (`filter="mlx"` and the `expand`
fields the table needs), kept for a few minutes. A model's details add its file list with
sizes, its config and the first paragraph of its card. Failures become typed errors a caller
can turn into a sentence: the Hub cannot be reached, a rate limit, no such repository, a gated
repository without access.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import (
    AppError,
    GatedRepo,
    HubRateLimited,
    HubRequestFailed,
    HubUnreachable,
    RepoNotFound,
    TokenRejected,
)
from ..models.fit import ModelShape, model_shape
from ..models.hf_cache import valid_repo_id

log = logging.getLogger(__name__)

SEARCH_FIELDS = ["downloads", "likes", "lastModified", "tags", "pipeline_tag", "safetensors", "config", "gated"]
SORTS = {"downloads": "downloads", "likes": "likes", "recently updated": "lastModified"}
VISION_TASKS = {"image-text-to-text", "image-to-text", "visual-question-answering", "video-text-to-text"}
CACHE_SECONDS = 300
MAX_CACHED = 200  # answers kept: pages of results and model details
MAX_FILES_BYTES = 50_000_000  # the small files read for the details panel (configs, cards)
PROBE_SECONDS = 60  # a Hub that answered this recently is not probed again before a search
WEIGHT_FILES = (".safetensors",)
MODEL_FILES = (".json", ".txt", ".model", ".tiktoken", ".jinja", ".py")  # config, tokenizer, processor, template
BYTES_PER_DTYPE = {"F64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2, "I8": 1,
                   "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}
T = TypeVar("T")


@dataclass(frozen=True)
class HubModel:
    """One search result: what the table shows. None means the Hub did not say."""

    repo_id: str
    downloads: int
    likes: int
    updated: datetime | None
    weight_bytes: int | None
    parameters: int | None
    bits: int | None
    vision: bool
    gated: bool


@dataclass(frozen=True)
class SearchPage:
    """A page of search results."""

    models: list[HubModel]
    page: int
    has_more: bool


@dataclass(frozen=True)
class HubFile:
    """A file of a repository, and whether a model download needs it."""

    path: str
    size: int
    needed: bool


@dataclass(frozen=True)
class ModelDetails:
    """What the details panel shows about one repository."""

    repo_id: str
    sha: str
    config: dict
    files: list[HubFile]
    card_intro: str
    gated: bool
    vision: bool
    tools: bool | None
    thinking: bool | None
    shape: ModelShape

    @property
    def download_bytes(self) -> int:
        """Bytes of the files a download fetches."""
        return sum(f.size for f in self.files if f.needed)


def bits_of(repo_id: str, config: dict | None = None) -> int | None:
    """Quantization bits from the config, else from the name ("-4bit", "-bf16"), else unknown."""
    quantization = (config or {}).get("quantization") or (config or {}).get("quantization_config") or {}
    if isinstance(quantization, dict) and quantization.get("bits"):
        return int(quantization["bits"])
    name = repo_id.lower()
    if match := re.search(r"(\d+)-?bits?\b", name):
        return int(match[1])
    return 16 if re.search(r"\b(bf16|fp16|f16)\b", name) else None


def weights_from_parameters(parameters: dict[str, int] | None, repo_id: str = "") -> tuple[int | None, int | None]:
    """(weight bytes, parameter count) from the Hub's safetensors counts per type.

    Quantized MLX weights are packed into U32 words with their scales and biases beside them,
    often at mixed bits, so their count says nothing exact about the parameters: then the
    model's own name ("-135M-", "-0.5B-") is used, or none.
    """
    if not parameters:
        return None, None
    size = sum(count * BYTES_PER_DTYPE.get(dtype, 2) for dtype, count in parameters.items())
    if "U32" not in parameters:
        return size, sum(parameters.values())
    return size, parameters_in_name(repo_id)


def parameters_in_name(repo_id: str) -> int | None:
    """A parameter count the repository's name states ("Qwen2.5-0.5B-Instruct" -> 500,000,000)."""
    match = re.search(r"(?<![\w.])(\d+(?:\.\d+)?)([MB])(?![a-z])", repo_id.split("/")[-1], flags=re.I)
    if not match:
        return None
    return int(float(match[1]) * (1e9 if match[2].upper() == "B" else 1e6))


def needed_files(paths: list[str]) -> set[str]:
    """The files a model needs: weights, config, tokenizer and processor; other weight formats only
    when there are no safetensors."""
    has_safetensors = any(p.endswith(WEIGHT_FILES) for p in paths)
    needed = {p for p in paths if p.endswith(MODEL_FILES) and "/" not in p}
    needed |= {p for p in paths if p.endswith(WEIGHT_FILES)}
    if not has_safetensors:
        needed |= {p for p in paths if p.endswith((".bin", ".npz"))}
    return needed


def card_intro(text: str) -> str:
    """The first paragraph of a model card, without its YAML header, headings or images."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.strip().splitlines()
                 if line.strip() and not line.lstrip().startswith(("#", "![", "<", "|", "```"))]
        if lines:
            return " ".join(lines)[:800]
    return ""


class HubService:
    """Search and details against one Hub endpoint, with a short cache."""

    def __init__(self, endpoint: str | None = None, token: str | bool | None = None,
                 files_dir: Path | None = None) -> None:
        from huggingface_hub import HfApi, constants

        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.api = HfApi(endpoint=self.endpoint, token=token)
        # Config, card and tokenizer config read for the details panel are kept apart from the shared
        # cache: there they would make every model looked at show up as a half-downloaded one.
        self.files_dir = Path(files_dir) if files_dir else Path(tempfile.mkdtemp(prefix="mlx-gradio-hub-files-"))
        self._cache: dict[tuple, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._reached_at = 0.0

    # --- search -----------------------------------------------------------------------------

    def search(self, query: str = "", author: str = "", task: str = "any", max_size_gb: float = 0.0,
               sort: str = "downloads", page: int = 0, page_size: int = 20) -> SearchPage:
        """One page of MLX models matching the query, in one request to the Hub."""
        page = max(0, int(page))
        key = ("search", query.strip(), author.strip(), task, sort, page, page_size)
        models = self._cached(key, lambda: self._search(query.strip(), author.strip(), task, sort,
                                                          (page + 1) * page_size + 1))
        if max_size_gb > 0:
            models = [m for m in models if m.weight_bytes is None or m.weight_bytes <= max_size_gb * 1e9]
        start = page * page_size
        return SearchPage(models[start: start + page_size], page, len(models) > start + page_size)

    def _search(self, query: str, author: str, task: str, sort: str, limit: int) -> list[HubModel]:
        self._probe()
        pipeline = {"text": "text-generation", "vision": "image-text-to-text"}.get(task)
        found = self._call(lambda: list(self.api.list_models(
            filter="mlx", search=query or None, author=author or None, pipeline_tag=pipeline,
            sort=SORTS.get(sort, "downloads"), limit=limit, expand=SEARCH_FIELDS)), "search the Hub")
        return [_hub_model(info) for info in found]

    # --- details ----------------------------------------------------------------------------

    def details(self, repo_id: str) -> ModelDetails:
        """Files with sizes, config, card and capabilities of one repository (cached)."""
        if not valid_repo_id(repo_id):
            raise RepoNotFound(f"“{repo_id}” is not a model id (owner/name).")
        return self._cached(("details", repo_id), lambda: self._details(repo_id))

    def _details(self, repo_id: str) -> ModelDetails:
        info = self._call(lambda: self.api.model_info(repo_id, files_metadata=True), f"read {repo_id}")
        paths = [s.rfilename for s in info.siblings or []]
        needed = needed_files(paths)
        files = [HubFile(s.rfilename, int(s.size or 0), s.rfilename in needed) for s in info.siblings or []]
        config = self._json_file(repo_id, info.sha, "config.json") if "config.json" in paths else {}
        template = self._json_file(repo_id, info.sha, "tokenizer_config.json").get("chat_template") \
            if "tokenizer_config.json" in paths else None
        readme = self._text_file(repo_id, info.sha, "README.md") if "README.md" in paths else ""
        parameters = info.safetensors.parameters if info.safetensors else {}
        weight_bytes = sum(f.size for f in files if f.needed and f.path.endswith(WEIGHT_FILES))
        template_text = json.dumps(template) if template is not None else None
        return ModelDetails(
            repo_id=repo_id, sha=info.sha or "", config=config, files=files, card_intro=card_intro(readme),
            gated=bool(info.gated), vision="vision_config" in config or info.pipeline_tag in VISION_TASKS,
            tools=None if template_text is None else "tools" in template_text,
            thinking=None if template_text is None else ("<think>" in template_text
                                                         or "enable_thinking" in template_text),
            shape=model_shape(config, weight_bytes, parameters.keys()),
        )

    def _json_file(self, repo_id: str, revision: str, name: str) -> dict:
        try:
            return json.loads(self._text_file(repo_id, revision, name) or "{}")
        except ValueError:
            log.warning("%s in %s is not valid JSON", name, repo_id)
            return {}

    def _text_file(self, repo_id: str, revision: str, name: str) -> str:
        """A small file of the repository (kept in `files_dir`, not in the shared cache)."""
        from huggingface_hub import hf_hub_download

        path = self._call(lambda: hf_hub_download(repo_id, name, revision=revision or None, cache_dir=self.files_dir,
                                                  endpoint=self.endpoint, token=self.api.token), f"read {name}")
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(2_000_000)
        prune_files(self.files_dir, MAX_FILES_BYTES)
        return text

    # --- token ------------------------------------------------------------------------------

    def sign_in(self, token: str) -> None:
        """Check a token with the Hub and keep it in huggingface_hub's own login storage (`hf` and mlx-lm see it)."""
        from huggingface_hub import login

        token = token.strip()
        if not re.fullmatch(r"hf_[A-Za-z0-9_]{8,200}", token):
            raise TokenRejected("That is not a Hugging Face token (they start with “hf_”).")
        try:
            self._call(lambda: login(token=token, add_to_git_credential=False), "check the token")
        except (GatedRepo, ValueError) as exc:
            raise TokenRejected("The Hub did not accept that token; copy it again from "
                                "huggingface.co/settings/tokens.") from exc
        self._cache.clear()  # gated repositories may read differently now

    def sign_out(self) -> None:
        """Forget the stored token (a token in the HF_TOKEN variable stays in use)."""
        from huggingface_hub import logout

        logout()
        self._cache.clear()

    @staticmethod
    def token_hint() -> str:
        """The token in use, masked ("hf_…x7Qz"), or "" when there is none."""
        from huggingface_hub import get_token

        token = get_token() or ""
        return f"{token[:3]}…{token[-4:]}" if token else ""

    # --- plumbing ---------------------------------------------------------------------------

    def _cached(self, key: tuple, fetch: Callable[[], T]) -> T:
        with self._lock:
            hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        value = fetch()
        now = time.monotonic()
        with self._lock:
            self._cache[key] = (now, value)
            if len(self._cache) > MAX_CACHED:  # expired answers go first, then the oldest
                for old in [k for k, (at, _) in self._cache.items() if now - at >= CACHE_SECONDS]:
                    del self._cache[old]
                while len(self._cache) > MAX_CACHED:
                    del self._cache[min(self._cache, key=lambda k: self._cache[k][0])]
        return value

    def _probe(self) -> None:
        """Fail fast when the Hub does not answer, instead of after the client's minutes of retries."""
        if time.monotonic() - self._reached_at < PROBE_SECONDS:
            return
        from huggingface_hub import get_session

        try:
            response = get_session().head(f"{self.endpoint}/api/models", params={"limit": 1}, timeout=5)
        except Exception as exc:  # noqa: BLE001 - any transport failure means the same thing to the user
            raise HubUnreachable(f"The Hugging Face Hub ({self.endpoint}) cannot be reached: {exc}.") from exc
        if response.status_code >= 500:
            raise HubUnreachable(f"The Hugging Face Hub answers with an error ({response.status_code}).")
        self._reached_at = time.monotonic()

    def _call(self, fn: Callable[[], T], action: str) -> T:
        """Run a huggingface_hub call, turning its failures into this app's errors."""
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - hub_error knows which failures are the Hub's; others go on up
            mapped = hub_error(exc, action)
            if mapped is None:
                raise
            raise mapped from exc
        self._reached_at = time.monotonic()
        return result


def hub_error(exc: Exception, action: str) -> AppError | None:
    """The app's error for a huggingface_hub failure, or None if `exc` is not one.

    `HubUnreachable` and `HubRateLimited` are the ones worth trying again later.
    """
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return GatedRepo(f"{exc.repo_id or 'This repository'} is gated: accept its terms on the Hub, "
                         "then set a token that has access.")
    if isinstance(exc, RepositoryNotFoundError):
        name = f" {exc.repo_id}" if exc.repo_id else ""
        return RepoNotFound(f"There is no repository{name} on the Hub (or it is private).")
    if isinstance(exc, LocalEntryNotFoundError):  # snapshot_download's word for "the Hub did not answer"
        return HubUnreachable(f"The Hub could not be reached to {action}.")
    if isinstance(exc, (EntryNotFoundError, RevisionNotFoundError)):
        return HubRequestFailed(f"The Hub no longer has that file or revision ({exc}); search for the model again.")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status == 429:
            return HubRateLimited("The Hub is limiting requests from this machine; wait a minute.")
        if status in (401, 403):
            return GatedRepo(f"The Hub refused to {action} ({status}): set a token that has access.")
        if status and status < 500:
            return HubRequestFailed(f"The Hub refused to {action} ({status}).")
        return HubUnreachable(f"The Hub could not be reached to {action} (it answered {status or exc}).")
    if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2"):
        return HubUnreachable(f"The Hugging Face Hub cannot be reached: {str(exc).rstrip('.')}.")
    return None


def _hub_model(info: Any) -> HubModel:
    """A search result from huggingface_hub's ModelInfo."""
    config = info.config or {}
    bits = bits_of(info.id, config)
    weight_bytes, parameters = weights_from_parameters(info.safetensors.parameters if info.safetensors else None,
                                                       info.id)
    tags = set(info.tags or [])
    return HubModel(
        repo_id=info.id, downloads=int(info.downloads or 0), likes=int(info.likes or 0), updated=info.last_modified,
        weight_bytes=weight_bytes, parameters=parameters, bits=bits,
        vision=info.pipeline_tag in VISION_TASKS or "vision" in tags or "vl" in str(config.get("model_type", "")),
        gated=bool(info.gated),
    )


def prune_files(folder: Path, budget_bytes: int) -> None:
    """Keep the details panel's small files within `budget_bytes`: the repositories read longest ago go first."""
    repos = []
    for repo in folder.glob("models--*"):
        try:
            files = [p for p in repo.rglob("*") if p.is_file()]
            repos.append((max((p.stat().st_mtime for p in files), default=0.0), sum(p.stat().st_size for p in files),
                          repo))
        except OSError as exc:  # being written or removed meanwhile: looked at next time
            log.debug("Cannot size %s: %s", repo, exc)
    total = sum(size for _, size, _ in repos)
    for _, size, repo in sorted(repos):
        if total <= budget_bytes:
            return
        try:
            shutil.rmtree(repo)
        except OSError as exc:
            log.warning("Cannot remove the old details files %s: %s", repo, exc)
        total -= size
