"""The Models tab's search and details: owners only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..hub.search import HubService, ModelDetails, SearchPage
from ..models.fit import Fit, default_context, estimate, weights_verdict
from ..models.memory import MachineMemory
from .access import Access
from .feedback import user_errors
from .settings import number

TASKS = ("any", "text", "vision")
MAX_QUERY = 200


@dataclass(frozen=True)
class SearchView:
    """A page of results and a first fit verdict for each (from the weights alone)."""

    page: SearchPage
    fits: list[str]


@dataclass(frozen=True)
class DetailsView:
    """One model's details and its fit at the chosen context."""

    details: ModelDetails
    fit: Fit


class HubPart:
    """Handlers for searching the Hub and looking at one model."""

    def __init__(self, hub: HubService, access: Access, memory: Callable[[], MachineMemory]) -> None:
        self.hub = hub
        self.access = access
        self.memory = memory

    def search(self, query: Any, author: Any, task: Any, max_size_gb: Any, sort: Any, page: Any,
               request: gr.Request) -> SearchView:
        """Handler: one page of MLX models from the Hub."""
        with user_errors("search the Hub"):
            self.access.require_owner(self.access.caller(request), "search the Hub")
            found = self.hub.search(
                query=str(query or "")[:MAX_QUERY], author=str(author or "")[:MAX_QUERY],
                task=task if task in TASKS else "any", max_size_gb=number(max_size_gb, 0.0, 0.0, 1e6),
                sort=str(sort or "downloads"), page=number(page, 0, 0, 10_000, int),
            )
        memory = self.memory()
        return SearchView(found, [weights_verdict(m.weight_bytes, memory) for m in found.models])

    def details(self, repo_id: Any, context: Any, request: gr.Request) -> DetailsView:
        """Handler: a model's files, config, card and whether it fits at `context` tokens (0: its default)."""
        with user_errors("read that model"):
            self.access.require_owner(self.access.caller(request), "look at models on the Hub")
            details = self.hub.details(str(repo_id or ""))
        tokens = number(context, 0, 0, 10_000_000, int) or default_context(details.shape)
        return DetailsView(details, estimate(details.shape, tokens, self.memory()))

    def sign_in(self, token: Any, request: gr.Request) -> str:
        """Handler: keep a Hugging Face token for gated and private models; returns it masked."""
        with user_errors("save the token"):
            self.access.require_owner(self.access.caller(request), "set the Hugging Face token")
            self.hub.sign_in(str(token or ""))
        gr.Info("Token saved.")
        return self.hub.token_hint()

    def sign_out(self, request: gr.Request) -> str:
        """Handler: forget the stored token; returns the token still in use (from HF_TOKEN), masked."""
        with user_errors("remove the token"):
            self.access.require_owner(self.access.caller(request), "remove the Hugging Face token")
            self.hub.sign_out()
        return self.hub.token_hint()

    def token_hint(self, request: gr.Request) -> str:
        """Handler: the token in use, masked."""
        with user_errors("show the token"):
            self.access.require_owner(self.access.caller(request), "see the Hugging Face token")
        return self.hub.token_hint()
