"""Random values thrown at every handler through the controller (hypothesis).

Whatever a request carries (odd Unicode, lone surrogates, huge texts, foreign or made-up
conversation ids, paths, numbers that are not numbers, another user's login or none), each call
ends in a `gr.Error` or a correct result: never another exception, never a status stuck on
"loading", never a store that no longer opens, never a change to another user's conversation
files (byte for byte) and never, from a guest or no login, a change to the owners' settings.
The chat, conversations, model picker, settings, servers, endpoints, library, downloads and
Hub handlers are all in the draw; the Hub is the one on 127.0.0.1. Replies come from a tiny
random-weight llama, so hundreds of them take seconds.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import gradio as gr
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlx_gradio.controller.access import Access
from mlx_gradio.serving.profiles import new_profile
from mlx_gradio.store import DB_NAME, USER_SETTING_FIELDS, Store


def mostly(good: st.SearchStrategy, odd: st.SearchStrategy) -> st.SearchStrategy:
    """`good` three times in four, else `odd` (hypothesis would flatten `one_of` and drown `good` in odd branches)."""
    return st.integers(0, 3).flatmap(lambda n: odd if n == 3 else good)


OWNERS = {"ann"}
REQUESTS = [gr.Request(username="ann", session_hash="ann-1"), gr.Request(username="ann", session_hash="ann-2"),
            gr.Request(username="gus", session_hash="gus-1"), gr.Request(username=None, session_hash="nobody")]
odd_text = st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=80)
texts = st.one_of(odd_text, st.sampled_from(["", " ", "\n\t", "A" * 200_000, "💬" * 3000, "../../etc/passwd"]))
junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), texts,
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
numbers = mostly(st.one_of(st.integers(0, 24), st.floats(0, 2)), junk)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, local_hub):
    """A controller with an owner and a guest, the tiny llama as the model, and files worth pointing at."""
    from mlx_gradio.app_factory import create_controller
    from mlx_gradio.models.gguf import import_gguf
    from tests.test_gguf import write_tiny_gguf

    root = tmp_path_factory.mktemp("fuzz")
    gguf = root / "tiny-llama.gguf"
    write_tiny_gguf(gguf)
    model = root / "models" / "tiny-llama"
    import_gguf(gguf, model)
    data_dir = root / "data"
    controller = create_controller(data_dir, Access(owners={"ann": "pw"}, guests={"gus": "pw"}), upload_dir=root)
    controller.store.settings.update_app(model=str(model), model_folders=[str(model)])
    picture = root / "picture.png"
    shutil.copy(Path(__file__).parent / "data" / "legacy-mlx-gradio.json", root / "not-an-image.png")
    from PIL import Image

    Image.new("RGB", (8, 8), (0, 128, 255)).save(picture)
    for request in REQUESTS[0], REQUESTS[2]:  # a conversation each for the owner and the guest to start from
        views = list(controller.replies.send("", {"text": "Hello"}, str(model), "", 0, 1, 0, 0, 1, -1, 8, True,
                                             request=request))
        assert views[-1].conversation["messages"][-1]["role"] == "assistant"
    paths = [str(model), str(gguf), str(picture), str(root / "not-an-image.png"), str(root / "missing"),
             str(data_dir), str(data_dir / "mlx-gradio.json"), "/etc/passwd", "", "relative/path"]
    yield controller, data_dir, model, paths
    controller.shutdown()


# A conversation id is drawn as ("own" | "foreign", n) and looked up in the store when used: the
# strategy itself must not depend on what earlier examples left in the store.
id_picks = mostly(st.one_of(st.tuples(st.just("own"), st.integers(0, 9)), st.just(("new", 0))),
                  st.one_of(st.tuples(st.just("foreign"), st.integers(0, 9)),
                            st.text(alphabet="0123456789abcdef", min_size=32, max_size=32), junk))


def conversation_id(controller, request: gr.Request, pick: object) -> object:
    """The id a drawn pick stands for right now: one of the user's own, someone else's, a new chat, or the pick."""
    if not (isinstance(pick, tuple) and len(pick) == 2 and pick[0] in ("own", "foreign", "new")):
        return pick
    if pick[0] == "new":
        return ""
    summaries = [s for user in ("ann", "gus") for s in controller.store.conversations.list(user)[0]]
    chosen = [s.id for s in summaries if (s.owner == request.username) == (pick[0] == "own")]
    return chosen[pick[1] % len(chosen)] if chosen else ""


def saved_record(controller, pick: object) -> object:
    """The id of one of the saved server profiles or endpoints for a drawn number (looked up when used), or the pick."""
    if not isinstance(pick, int) or isinstance(pick, bool):
        return pick
    saved = [r["id"] for r in controller.store.server_profiles.all() + controller.store.endpoints.all()]
    return saved[pick % len(saved)] if saved else ""


def call_handler(controller, model: Path, paths: list[str], data: st.DataObject,
                 requests: st.SearchStrategy = mostly(st.sampled_from(REQUESTS[:3]), st.just(REQUESTS[3]))) -> None:
    """Draw one handler and its arguments, and run it to its end."""
    request = data.draw(requests, label="request")
    ids = id_picks.map(lambda pick: conversation_id(controller, request, pick))
    path = mostly(st.sampled_from(paths), junk)
    models = mostly(st.sampled_from([str(model), ""]), path)
    user_settings = st.lists(numbers, min_size=len(USER_SETTING_FIELDS), max_size=len(USER_SETTING_FIELDS))
    words = st.builds(str.__add__, st.sampled_from(["Hi ", "What is 2+2? ", "Tell me a story. "]), odd_text)
    message = mostly(st.fixed_dictionaries({"text": words}),
                     st.one_of(st.fixed_dictionaries({"text": texts, "files": st.lists(path, max_size=2)}), junk))
    edit = st.builds(lambda index, value: gr.EditData(None, {"index": index, "value": value, "previous_value": ""}),
                     st.one_of(st.integers(-2, 12), st.lists(st.integers(0, 5), max_size=2), junk),
                     mostly(words, st.one_of(texts, st.lists(st.fixed_dictionaries({"text": texts})), junk)))
    replies, conversations, models_part = controller.replies, controller.conversations, controller.models
    servers, library, downloads, hub = controller.servers, controller.library, controller.downloads, controller.hub
    record_ids = mostly(st.integers(0, 9), junk).map(lambda pick: saved_record(controller, pick))
    never_started = st.one_of(junk, st.text(alphabet="0123456789abcdef", min_size=12, max_size=12))
    draft = new_profile("fuzz", str(model)).record()
    profile_fields = st.builds(lambda key, value: {**draft, key: value}, st.sampled_from(sorted(draft)),
                               mostly(texts, junk))
    repo_ids = mostly(st.sampled_from(["mlx-community/tiny-random-llama", "mlx-community/tiny-qwen2-vl-bf16",
                                       "someone/missing"]), st.one_of(texts, junk))
    deletable = mostly(st.sampled_from(["hf:mlx-community/tiny-random-llama", f"dir:{controller.data_dir}"]),
                       st.one_of(path, junk))  # the chat's model stays: replies have the most to get wrong
    keys = st.one_of(st.just(f"dir:{model}"), deletable)
    handlers = {
        "page_load": lambda: controller.page_load(request),
        "list": lambda: conversations.list(data.draw(texts), data.draw(numbers), data.draw(ids), request),
        "open": lambda: conversations.open(data.draw(ids), request),
        "rename": lambda: conversations.rename(data.draw(ids), data.draw(mostly(words, texts)), request),
        "delete": lambda: conversations.delete(data.draw(ids), request),
        "export": lambda: conversations.export(data.draw(ids), request),
        "export_markdown": lambda: conversations.export(data.draw(ids), request, markdown=True),
        "import": lambda: conversations.import_file(data.draw(path), request),
        "send": lambda: list(replies.send(data.draw(ids), data.draw(message), data.draw(models),
                                          *data.draw(user_settings), request=request)),
        "regenerate": lambda: list(replies.regenerate(data.draw(ids), data.draw(models), *data.draw(user_settings),
                                                      request=request)),
        "edit": lambda: list(replies.edit(data.draw(ids), data.draw(models), *data.draw(user_settings),
                                          edit=data.draw(edit), request=request)),
        "stop": lambda: replies.stop(data.draw(ids), request),
        "previous_version": lambda: replies.previous_version(data.draw(ids), request),
        "next_version": lambda: replies.next_version(data.draw(ids), request),
        "select_model": lambda: models_part.select(data.draw(models), request),
        "status": lambda: models_part.status(request),
        "add_folder": lambda: models_part.add_folder(data.draw(path), request),
        "import_gguf": lambda: list(models_part.import_gguf(data.draw(path), request)),
        "save_settings": lambda: controller.chat_settings.save(data.draw(ids), *data.draw(user_settings),
                                                               request=request),
        "save_engine": lambda: controller.settings.save_engine(*(data.draw(numbers) for _ in range(3)), request),
        "continue": lambda: list(replies.continue_reply(data.draw(ids), data.draw(models), *data.draw(user_settings),
                                                        request=request)),
        "show_settings": lambda: controller.chat_settings.show(data.draw(ids), data.draw(models), request),
        "pick_model": lambda: controller.chat_settings.pick_model(data.draw(ids), data.draw(models), request),
        "save_preset": lambda: controller.chat_settings.save_preset(data.draw(mostly(words, texts)),
                                                                    data.draw(mostly(words, texts)), request),
        "delete_preset": lambda: controller.chat_settings.delete_preset(data.draw(texts), request),
        "server_draft": lambda: servers.draft(request),
        "server_profiles": lambda: servers.profiles(request),
        "server_save": lambda: servers.save(data.draw(mostly(profile_fields, junk)), request),
        "server_duplicate": lambda: servers.duplicate(data.draw(record_ids), request),
        "server_delete": lambda: servers.delete(data.draw(record_ids), request),
        "server_start": lambda: servers.start(data.draw(never_started), request),  # a real start is not fuzzed
        "server_restart": lambda: servers.restart(data.draw(never_started), request),
        "server_stop": lambda: servers.stop(data.draw(record_ids), request),
        "server_watch": lambda: servers.watch(request),
        "server_log": lambda: servers.log_tail(data.draw(record_ids), request),
        "endpoints": lambda: servers.endpoints(request),
        "add_endpoint": lambda: servers.add_endpoint(data.draw(mostly(words, texts)),
                                                     data.draw(mostly(st.just("http://127.0.0.1:9/v1"), texts)),
                                                     data.draw(texts), data.draw(mostly(words, texts)),
                                                     data.draw(junk), request),
        "remove_endpoint": lambda: servers.remove_endpoint(data.draw(record_ids), request),
        "library_list": lambda: library.list(request),
        "library_downloaded": lambda: library.downloaded(data.draw(repo_ids), request),
        "library_use": lambda: library.use(data.draw(keys), request),
        "library_plan_delete": lambda: library.plan_delete(data.draw(keys), request),
        "library_delete": lambda: library.delete(data.draw(deletable), request),
        "other_apps": lambda: library.other_apps(request),
        "download_start": lambda: downloads.start(data.draw(repo_ids), request),
        "download_cancel": lambda: downloads.cancel(data.draw(repo_ids), request),
        "download_forget": lambda: downloads.forget(data.draw(repo_ids), request),
        "downloads": lambda: downloads.list(request),
        "hub_search": lambda: hub.search(data.draw(texts), data.draw(texts), data.draw(mostly(st.just("any"), texts)),
                                         data.draw(numbers), data.draw(mostly(st.just("downloads"), texts)),
                                         data.draw(numbers), request),
        "hub_details": lambda: hub.details(data.draw(repo_ids), data.draw(numbers), request),
        "hub_sign_in": lambda: hub.sign_in(data.draw(texts), request),
        "hub_sign_out": lambda: hub.sign_out(request),
        "token_hint": lambda: hub.token_hint(request),
    }
    weighted = [*sorted(handlers), "send", "send", "send", "regenerate", "edit"]  # replies have the most to get wrong
    name = data.draw(st.sampled_from(weighted), label="handler")
    before = untouchable(controller, controller.data_dir, request.username)
    try:
        result = handlers[name]()
        event(f"{name}: done")
        check_result(controller, name, result, request.username)
    except gr.Error as exc:
        assert str(exc.message).strip(), f"{name} raised an empty error"
        event(f"{name}: {exc.message[:40]}")
    controller.engine.call(lambda: None).result(timeout=120)  # every queued load and reply has run
    after = untouchable(controller, controller.data_dir, request.username)
    changed = sorted({*(f"file {n}" for n in {*before["files"], *after["files"]}
                        if before["files"].get(n) != after["files"].get(n)),
                      *(f"table {t}" for t in {*before["settings"], *after["settings"]}
                        if before["settings"].get(t) != after["settings"].get(t))})
    assert not changed, f"{name} changed what {request.username} may not: {', '.join(changed)}"


# The same draws on every run (derandomized), none kept between runs, and no time limit on a reply.
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def untouchable(controller, data_dir: Path, user: str | None) -> dict:
    """What a call by `user` must leave as it was: other users' conversation files, byte for byte, and for a
    guest or no login the whole settings file but that guest's own records (settings, presets)."""
    owned = {s.id for s in controller.store.conversations.list(user)[0]} if user else set()
    files = {path.name: path.read_bytes() for path in (data_dir / "conversations").glob("*.json")
             if path.name != "index.json" and path.stem not in owned}
    settings = {}
    if user not in OWNERS:
        saved = json.loads((data_dir / DB_NAME).read_text()) if (data_dir / DB_NAME).exists() else {}
        # An owner's download from an earlier example writes its progress there in the background (the download
        # handlers themselves refuse guests: see `check_result`).
        settings = {table: kept for table, docs in saved.items() if table != "downloads"
                    if (kept := {k: doc for k, doc in docs.items() if doc.get("user") != user})}
    return {"files": files, "settings": settings}


def check_result(controller, name: str, result: object, user: str | None) -> None:
    """A handler that answered gives this user's own data, and only to whom may see it."""
    assert user is not None, f"{name} answered a call without a login"
    is_owner = user in OWNERS
    owner_only = ("server_", "endpoint", "library_", "download", "hub_", "token_hint", "other_apps", "save_engine",
                  "add_folder", "import_gguf")
    assert is_owner or not name.startswith(owner_only) and "endpoint" not in name, f"{name} served guest {user}"
    if name == "page_load":
        assert result.user == user and result.is_owner == is_owner
        assert all(s.owner == user for s in result.conversations.summaries)
    if name == "list":
        assert all(s.owner == user for s in result.summaries)
    views = result if isinstance(result, list) else [result]  # a reply's handler streams its views
    for view in views if name in ("open", "rename", "send", "regenerate", "edit", "continue") else []:
        conversation = getattr(view, "conversation", None)
        assert conversation is None or conversation["owner"] == user


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_every_handler_ends_in_a_clear_error_or_a_correct_result(world, data):
    controller, data_dir, model, paths = world
    call_handler(controller, model, paths, data)
    status = controller.engine.status()
    assert status.state in ("empty", "ready", "error") and not status.generating
    reopened = Store(data_dir)  # the store on disk still opens, with nothing moved aside
    assert reopened.take_notices() == []
    for user in ("ann", "gus"):
        for summary in reopened.conversations.list(user)[0]:
            assert summary.owner == user
            reopened.conversations.get(summary.id)
    app = reopened.settings.app()
    assert all(isinstance(app[k], (int, float)) and math.isfinite(app[k]) for k in ("context_limit", "cache_budget_gb"))


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_a_guest_or_a_call_without_a_login_changes_nothing_of_the_owners(world, data):
    """The same draw, from the guest and from no login only: each handler is met a few times by each."""
    controller, _data_dir, model, paths = world
    call_handler(controller, model, paths, data, st.sampled_from(REQUESTS[2:]))
