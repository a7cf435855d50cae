"""The Models tab's downloads: start, cancel, resume and dismiss them, and list them with progress. Owners only."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..hub.downloads import DownloadProgress, Downloads
from ..hub.search import HubService
from .access import Access
from .feedback import user_errors


class DownloadsPart:
    """Handlers for downloads; the work itself runs on the download threads."""

    def __init__(self, hub: HubService, downloads: Downloads, access: Access) -> None:
        self.hub = hub
        self.downloads = downloads
        self.access = access

    def start(self, repo_id: Any, request: gr.Request) -> DownloadProgress:
        """Handler: download (or resume) a model from the Hub into the Hugging Face cache."""
        with user_errors("download that model"):
            self.access.require_owner(self.access.caller(request), "download models")
            details = self.hub.details(str(repo_id or ""))
            progress = self.downloads.start(details)
        gr.Info(f"Downloading {details.repo_id}.")
        return progress

    def cancel(self, repo_id: Any, request: gr.Request) -> DownloadProgress:
        """Handler: stop a download; what it fetched is kept for Resume."""
        with user_errors("cancel that download"):
            self.access.require_owner(self.access.caller(request), "cancel downloads")
            return self.downloads.cancel(str(repo_id or ""))

    def forget(self, repo_id: Any, request: gr.Request) -> None:
        """Handler: take a stopped or finished download off the list (its files stay in the cache)."""
        with user_errors("remove that download from the list"):
            self.access.require_owner(self.access.caller(request), "manage downloads")
            self.downloads.forget(str(repo_id or ""))

    def list(self, request: gr.Request) -> list[DownloadProgress]:
        """Handler: every download with its progress now."""
        with user_errors("show the downloads"):
            self.access.require_owner(self.access.caller(request), "see downloads")
        return self.downloads.list()

    def shutdown(self) -> None:
        """Stop the downloads; they are listed as interrupted at the next start."""
        self.downloads.shutdown()
