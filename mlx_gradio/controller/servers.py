"""The Servers tab: server profiles and the servers they run. Owners only."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import replace
from typing import Any

import gradio as gr

from .. import errors
from ..serving.distributed_hosts import versions_table
from ..serving.distributed_plan import describe, parse_hosts, ring_hostfile
from ..serving.distributed_ranks import RankFacts
from ..serving.model_copy import CopyStatus, ModelCopies, plan_copy
from ..serving.profiles import (
    DISTRIBUTED,
    VISION,
    ServerProfile,
    check_profile,
    model_kind,
    new_profile,
    next_free_port,
    split_report,
)
from ..serving.remote import ENDPOINT_PREFIX, SERVER_PREFIX, RemoteTarget
from ..serving.supervisor import READY, Servers, ServerStatus, Usage
from ..store import Store
from .access import Access
from .feedback import user_errors
from .models import ModelsPart

log = logging.getLogger(__name__)


class ServersPart:
    """Handlers for profiles (create, edit, duplicate, delete) and servers (start, stop, restart, watch)."""

    def __init__(self, servers: Servers, copies: ModelCopies, store: Store, models: ModelsPart,
                 access: Access) -> None:
        self.servers = servers
        self.copies = copies
        self.store = store
        self.models = models
        self.access = access

    # --- profiles ---------------------------------------------------------------------------

    def profiles(self, request: gr.Request) -> list[ServerProfile]:
        """Handler: the saved profiles, by name."""
        with user_errors("list the server profiles"):
            self.access.require_owner(self.access.caller(request), "manage servers")
        return sorted(self._saved().values(), key=lambda p: p.name.lower())

    def draft(self, request: gr.Request) -> ServerProfile:
        """Handler: a new profile for the model picked in the chat, on the next free port (not saved yet)."""
        with user_errors("prepare a server"):
            caller = self.access.caller(request)
            self.access.require_owner(caller, "manage servers")
            model = self.models.selected(caller)
            name = next((m.name for m in self.models.available() if m.path == model), "server")
            taken = {p.port for p in self._saved().values()} | self.servers.ports_in_use()
            return new_profile(name, model, next_free_port(taken=taken))

    def save(self, fields: dict[str, Any], request: gr.Request) -> ServerProfile:
        """Handler: create or update a profile from the form's fields; the model must be one this app lists."""
        with user_errors("save the server profile"):
            self.access.require_owner(self.access.caller(request), "manage servers")
            profile = self._from_fields(fields)
            self.store.server_profiles.save(profile.record())
        return profile

    def duplicate(self, profile_id: Any, request: gr.Request) -> ServerProfile:
        """Handler: a copy of a profile under a new name and the next free port."""
        with user_errors("duplicate the server profile"):
            self.access.require_owner(self.access.caller(request), "manage servers")
            original = self._profile(profile_id)
            taken = {p.port for p in self._saved().values()} | self.servers.ports_in_use()
            copy = replace(new_profile(f"{original.name} (copy)", original.model, next_free_port(taken=taken)),
                           **{k: v for k, v in original.record().items()
                              if k not in ("id", "name", "port", "start_with_app")})
            self.store.server_profiles.save(copy.record())
        return copy

    def delete(self, profile_id: Any, request: gr.Request) -> None:
        """Handler: delete a profile (its server must be stopped first)."""
        with user_errors("delete the server profile"):
            self.access.require_owner(self.access.caller(request), "manage servers")
            profile = self._profile(profile_id)
            status = self.servers.get(profile.id)
            if status is not None and status.running:
                raise errors.ProfileInvalid(f"{profile.name} is running; stop it first.")
            self.store.server_profiles.remove(profile.id)

    # --- servers ----------------------------------------------------------------------------

    def start(self, profile_id: Any, request: gr.Request) -> ServerStatus:
        """Handler: check the profile (model, port, host, arguments) and start its server."""
        with user_errors("start the server"):
            self.access.require_owner(self.access.caller(request), "start servers")
            profile = self._profile(profile_id)
            checked = check_profile(profile, in_use=self.servers.ports_in_use(besides=profile.id))
            return self.servers.start(checked)

    def plan(self, fields: dict[str, Any], request: gr.Request) -> str:
        """Handler: a distributed profile's plan as the form has it, before anything starts: each rank's share and
        the hosts' versions side by side, or why it cannot run."""
        with user_errors("plan the split"):
            self.access.require_owner(self.access.caller(request), "plan servers")
            split, facts, problems = split_report(self._from_fields(fields))
        if not split.ok:
            return f"**Cannot split:** {' '.join(problems)}"
        verdict = ("**Cannot start:** " + " ".join(problems)) if problems else "**The model splits and fits.**"
        return f"{verdict}\n\n{describe(split)}\n\n{versions_table(facts)}"

    def copy_model(self, profile_id: Any, request: gr.Request) -> CopyStatus:
        """Handler: copy a distributed profile's model (as saved) to its hosts that lack it, with mlx_lm.share
        from a host that has it; refused, saying why, when the hosts cannot take it."""
        with user_errors("copy the model"):
            self.access.require_owner(self.access.caller(request), "copy models to other machines")
            profile = self._profile(profile_id)
            if profile.kind != DISTRIBUTED:
                raise errors.CopyRefused("Only a distributed profile has other hosts to copy its model to.")
            try:
                entries = ring_hostfile(profile.hosts)
            except ValueError as exc:
                raise errors.CopyRefused(f"The hosts cannot be read: {exc}") from exc
            plan = plan_copy(parse_hosts(profile.hosts), profile.model)
            first = {}
            for entry in entries:
                first.setdefault(entry["ssh"], entry)
            return self.copies.start(profile.id, plan, [first[host] for host in plan.hosts],
                                     self.servers.ports_in_use())

    def copy_status(self, profile_id: Any, request: gr.Request) -> CopyStatus | None:
        """Handler: the profile's model copy as it stands (None: none was started since the app started)."""
        with user_errors("show the copy"):
            self.access.require_owner(self.access.caller(request), "see model copies")
        return self.copies.status(str(profile_id or ""))

    def stop_copy(self, profile_id: Any, request: gr.Request) -> CopyStatus | None:
        """Handler: stop the profile's model copy on every host (what had landed is removed)."""
        with user_errors("stop the copy"):
            self.access.require_owner(self.access.caller(request), "stop model copies")
        return self.copies.stop(str(profile_id or ""))

    def stop(self, profile_id: Any, request: gr.Request) -> ServerStatus:
        """Handler: stop a server (SIGTERM to its process group, SIGKILL after ten seconds)."""
        with user_errors("stop the server"):
            self.access.require_owner(self.access.caller(request), "stop servers")
            return self.servers.stop(str(profile_id or ""))

    def restart(self, profile_id: Any, request: gr.Request) -> ServerStatus:
        """Handler: stop the server if it runs, then start it from its profile as saved now."""
        with user_errors("restart the server"):
            self.access.require_owner(self.access.caller(request), "restart servers")
            status = self.servers.get(str(profile_id or ""))
            if status is not None and status.running:
                self.servers.stop(status.profile_id)
        return self.start(profile_id, request)

    def watch(self, request: gr.Request) -> list[tuple[ServerStatus, Usage | None]]:
        """Handler: every server's state with its CPU and memory now."""
        with user_errors("show the servers"):
            self.access.require_owner(self.access.caller(request), "see servers")
        return [(status, self.servers.usage(status.profile_id)) for status in self.servers.list()]

    def ranks(self, profile_id: Any, request: gr.Request) -> list[RankFacts]:
        """Handler: a distributed server's ranks (host, pid, state, CPU, memory, log tail) as last asked."""
        with user_errors("show the server's ranks"):
            self.access.require_owner(self.access.caller(request), "see servers")
        return self.servers.ranks(str(profile_id or ""))

    def log_tail(self, profile_id: Any, request: gr.Request) -> str:
        """Handler: the last lines of a server's log ("" for a profile not saved yet: it has run no server)."""
        with user_errors("show the server's log"):
            self.access.require_owner(self.access.caller(request), "see server logs")
        profile = self._saved().get(str(profile_id or ""))
        return self.servers.log_tail(profile.id) if profile is not None else ""

    # --- chatting through servers and endpoints ---------------------------------------------

    def targets(self) -> list[RemoteTarget]:
        """What the chat's picker offers besides model folders: ready servers, and the endpoints owners added."""
        saved = self._saved()
        targets = []
        for status in self.servers.list():
            profile = saved.get(status.profile_id)
            if status.state == READY and profile is not None:
                targets.append(RemoteTarget(f"{SERVER_PREFIX}{profile.id}", profile.name, status.url, profile.api_key,
                                            "default_model" if profile.kind != VISION else profile.model,
                                            profile.kind == VISION,
                                            activity=lambda profile_id=profile.id: self.servers.using(profile_id)))
        for record in self.store.endpoints.all():
            try:
                targets.append(RemoteTarget(f"{ENDPOINT_PREFIX}{record['id']}", str(record["name"]),
                                            str(record["base_url"]), str(record.get("api_key", "")),
                                            str(record["model"]), bool(record.get("vision"))))
            except KeyError as exc:  # the record is not logged: it may hold a key
                log.warning("Skipping an endpoint without %s (id %s)", exc, record.get("id"))
        return targets

    def endpoints(self, request: gr.Request) -> list[dict]:
        """Handler: the OpenAI-compatible endpoints the owners added (keys left out)."""
        with user_errors("list the endpoints"):
            self.access.require_owner(self.access.caller(request), "manage endpoints")
        return [{k: v for k, v in e.items() if k != "api_key"} | {"has_key": bool(e.get("api_key"))}
                for e in self.store.endpoints.all()]

    def add_endpoint(self, name: Any, base_url: Any, api_key: Any, model: Any, vision: Any,
                     request: gr.Request) -> dict:
        """Handler: offer any OpenAI-compatible URL in the chat's model picker (with an optional key)."""
        with user_errors("add the endpoint"):
            self.access.require_owner(self.access.caller(request), "manage endpoints")
            name, base_url, model = str(name or "").strip(), str(base_url or "").strip().rstrip("/"), \
                str(model or "").strip()
            if not name or not model:
                raise errors.ProfileInvalid("Give the endpoint a name and the model name it expects.")
            if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", base_url):
                raise errors.ProfileInvalid("The URL must start with http:// or https://, like "
                                            "http://127.0.0.1:8080/v1.")
            endpoint = {"id": uuid.uuid4().hex[:12], "name": name, "base_url": base_url,
                        "api_key": str(api_key or "").strip(), "model": model, "vision": bool(vision)}
            self.store.endpoints.save(endpoint)
            problem = self.models.check(f"{ENDPOINT_PREFIX}{endpoint['id']}")
        return {**endpoint, "problem": problem}

    def remove_endpoint(self, endpoint_id: Any, request: gr.Request) -> None:
        """Handler: take an endpoint out of the chat's model picker."""
        with user_errors("remove the endpoint"):
            self.access.require_owner(self.access.caller(request), "manage endpoints")
            self.store.endpoints.remove(str(endpoint_id or ""))

    # --- app start and exit -----------------------------------------------------------------

    def startup(self) -> None:
        """Adopt servers an earlier run left running; start the profiles marked to start with the app."""
        saved = self._saved()
        self.servers.adopt(saved)
        for profile in saved.values():
            if profile.start_with_app and self.servers.get(profile.id) is None:
                try:
                    self.servers.start(check_profile(profile, in_use=self.servers.ports_in_use()))
                except errors.AppError as exc:
                    log.error("Could not start %s with the app: %s", profile.name, exc)

    def shutdown(self) -> None:
        """Stop the model copies, and the servers this app started (but those whose profile keeps them running)."""
        self.copies.shutdown()
        self.servers.shutdown()

    # --- helpers ----------------------------------------------------------------------------

    def _saved(self) -> dict[str, ServerProfile]:
        profiles = {}
        for record in self.store.server_profiles.all():
            try:
                profile = ServerProfile.from_record(record)
            except TypeError as exc:  # the record is not logged: it may hold a key
                log.warning("Skipping an unreadable server profile (id %s): %s", record.get("id"), exc)
                continue
            profiles[profile.id] = profile
        return profiles

    def _profile(self, profile_id: Any) -> ServerProfile:
        profile = self._saved().get(str(profile_id or ""))
        if profile is None:
            raise errors.ProfileInvalid("There is no such server profile; pick one from the list.")
        return profile

    def _from_fields(self, fields: dict[str, Any]) -> ServerProfile:
        """A profile from the form, its model one of the app's models and its values of the right types."""
        model = str(fields.get("model") or "")
        if model not in {m.path for m in self.models.available()}:
            raise errors.ModelNotFound("Pick the server's model from the list of models on this machine.")
        saved = self._saved().get(str(fields.get("id") or ""))
        base = saved or new_profile(str(fields.get("name") or "server"), model)
        try:
            profile = replace(
                base, name=str(fields.get("name") or "").strip(), model=model,
                kind=str(fields.get("kind") or model_kind(model)), host=str(fields.get("host") or "127.0.0.1").strip(),
                port=int(fields.get("port") or base.port), max_tokens=int(fields.get("max_tokens") or base.max_tokens),
                temperature=float(fields.get("temperature", base.temperature)),
                top_p=float(fields.get("top_p", base.top_p)),
                prompt_cache_size=int(fields.get("prompt_cache_size", base.prompt_cache_size)),
                api_key=str(fields.get("api_key") or ""), extra_args=str(fields.get("extra_args") or ""),
                allowed_origins=str(fields.get("allowed_origins") or "").strip(),
                start_with_app=bool(fields.get("start_with_app")), keep_running=bool(fields.get("keep_running")),
                restart_when_stuck=bool(fields.get("restart_when_stuck")),
                network_ok=bool(fields.get("network_ok")), hosts=str(fields.get("hosts", base.hosts) or ""),
                split_mode=str(fields.get("split_mode") or base.split_mode),
                backend=str(fields.get("backend") or base.backend))
        except (TypeError, ValueError) as exc:
            raise errors.ProfileInvalid(f"A number in the profile is not a number ({exc}).") from exc
        if not profile.name:
            raise errors.ProfileInvalid("Give the server a name.")
        return profile
