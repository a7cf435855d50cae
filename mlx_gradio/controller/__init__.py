"""The one facade the tabs call, made of one part per area; each part turns service errors into `gr.Error`.

Every handler takes the `gr.Request` and asks `Access.caller` who is calling before it reads or
changes anything, so a crafted API call meets the same checks as a click.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from ..api.activity import RequestLog
from ..api.keys import ApiKeys
from ..api.routes import ApiService, Catalog
from ..api.runner import ApiServer
from ..engine.thread import Engine
from ..errors import AppError
from ..hub.downloads import Downloads
from ..hub.search import HubService
from ..models.memory import machine_memory
from ..serving.model_copy import ModelCopies
from ..serving.supervisor import Servers
from ..store import LOCAL_USER, Store
from .access import Access
from .api import ApiPart
from .chat_settings import ChatSettingsPart
from .conversations import ConversationsPart
from .downloads import DownloadsPart
from .feedback import user_errors
from .hub import HubPart
from .library import LibraryPart
from .models import ModelsPart
from .replies import RepliesPart
from .servers import ServersPart
from .settings import SettingsPart
from .views import PageView

log = logging.getLogger(__name__)


class Controller:
    """Everything the UI can do, wired to the engine, the store and the model folders."""

    def __init__(self, engine: Engine, store: Store, data_dir: Path, access: Access | None = None,
                 upload_dir: Path | None = None, hub: HubService | None = None, cache_dir: Path | None = None) -> None:
        from huggingface_hub import constants

        self.engine = engine
        self.store = store
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.access = access or Access()
        self.cache_dir = Path(cache_dir or constants.HF_HUB_CACHE)  # HF_HUB_CACHE / HF_HOME, as every HF tool
        self.models = ModelsPart(engine, store, self.data_dir, self.access, self.cache_dir,
                                 remote_targets=lambda: self.servers.targets())
        upload_dir = upload_dir or Path(gr.utils.get_upload_folder())
        self.conversations = ConversationsPart(engine, store, self.access, self.is_streaming,
                                               lambda conversation_id: self.replies.stop_conversation(conversation_id),
                                               upload_dir, [self.images_dir, self.data_dir / "files"])
        self.replies = RepliesPart(engine, store, self.access, self.models, self.conversations, self.images_dir,
                                   upload_dir)
        self.settings = SettingsPart(engine, store, self.access)
        self.chat_settings = ChatSettingsPart(store, self.access, self.models, self.conversations)
        hub = hub or HubService(files_dir=self.data_dir / "hub-files")
        self.hub = HubPart(hub, self.access, machine_memory)
        downloads = Downloads(self.cache_dir, hub.endpoint, store.downloads)
        self.downloads = DownloadsPart(hub, downloads, self.access)
        self.library = LibraryPart(self.models, engine, store, self.access, downloads, machine_memory)
        self.servers = ServersPart(Servers(self.data_dir / "servers", self.cache_dir, store.running_servers),
                                   ModelCopies(self.data_dir / "servers", self.cache_dir), store, self.models,
                                   self.access)
        catalog = Catalog(models=lambda: [m for m in self.models.available() if m.source != "endpoint"],
                          prepare=self.models.prepare,
                          generate=self.models.generate, loaded=lambda: {m.path for m in engine.status().models},
                          context_limit=lambda: store.settings.app()["context_limit"],
                          count_tokens=lambda request: engine.count_tokens(request).result())
        self.api = ApiPart(ApiServer(ApiService(catalog, ApiKeys(store.api_keys), RequestLog())), store, self.access)

    def is_streaming(self, conversation_id: str) -> bool:
        """Whether a reply is being written into this conversation."""
        return self.replies.is_streaming(conversation_id)

    def page_load(self, request: gr.Request) -> PageView:
        """Handler: everything a fresh browser tab shows, read from the store."""
        with user_errors("load the page"):
            caller = self.access.caller(request)
            model = self.models.selected(caller)
        return PageView(
            user=caller.user,
            is_owner=caller.is_owner,
            login_required=self.access.login_required,
            models=self.models.available(),
            model=model,
            status=self.models.status_for(caller),
            settings=self.chat_settings.show("", model, request),
            app_settings=self.store.settings.app(),
            conversations=self.conversations.page(caller),
            notices=self.store.take_notices() if caller.is_owner else [],
        )

    def is_owner(self, request: gr.Request) -> bool:
        """Handler: whether this user sees the owners' tabs."""
        with user_errors("load the page"):
            return self.access.caller(request).is_owner

    def startup(self, model: str | None = None, api_port: int | None = None) -> None:
        """Hand what was made without a login to the first owner (with logins); select the model to start with and
        load it in the background; adopt or start the servers; start the API if it is on (or on `api_port`)."""
        self.hand_over_local()
        self.servers.startup()
        self.models.startup(model)
        self.api.startup(api_port)

    def hand_over_local(self) -> None:
        """With logins on, the conversations (and settings) made without a login belong to the first owner."""
        owner = self.access.first_owner
        if owner is None:
            return
        try:
            moved = self.store.hand_over(LOCAL_USER, owner)
        except AppError as exc:  # a full disk, a file that cannot be read now: the rest moves at the next start
            log.warning("Could not give the conversations made without a login to %s (%s); tried again at the "
                        "next start", owner, exc)
            return
        if moved:
            log.info("%d conversation(s) made without a login now belong to %s, the first owner", moved, owner)
            self.store.notify(f"The {moved} conversation(s) made before logins were turned on now belong to "
                              f"{owner}, the first owner.")

    def stop_replies(self) -> None:
        """End every reply in flight at its next token or prompt chunk (the app is quitting)."""
        self.replies.stop_all()

    def shutdown(self) -> None:
        """Stop the replies in flight and the downloads, unload the model, and write what is kept in memory."""
        self.stop_replies()
        self.api.shutdown()
        self.downloads.shutdown()
        self.servers.shutdown()
        self.engine.shutdown()
        self.store.close()
