"""Access rules over real HTTP: logins, owners and guests, whose conversations, which files are served."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import gradio as gr
import httpx
import pytest

from mlx_gradio.chats import chat
from mlx_gradio.controller.access import Access
from mlx_gradio.store import DB_NAME
from tests.conftest import RunningApp, seed_data_dir
from tests.test_app import GREEDY

OWNER, GUS, GIA = ("ann", "owner-pw"), ("gus", "gus-pw"), ("gia", "gia-pw")


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory, demo_model: Path, tiny_llama: Path):
    """The app as an owner shares it: one owner login and two guests (one app for the module: each test
    makes conversations of its own and checks only those)."""
    folder = seed_data_dir(tmp_path_factory.mktemp("shared") / "data", demo_model, tiny_llama)
    app = RunningApp(folder, Access(owners=dict([OWNER]), guests=dict([GUS, GIA])))
    yield app
    app.close()


def guest_conversation(app, owner: str, text: str = "my secret plan") -> dict:
    """A saved conversation of `owner` (written through the store: these tests are about access, not replies)."""
    record = chat.new_conversation(owner, app.controller.models.demo_path)
    chat.add_user_message(record, text, [])
    chat.add_reply_version(record, 1, "noted", None, app.controller.models.demo_path)
    return app.store.conversations.save(record)


def status_of(url: str, method: str = "GET", body: bytes | None = None) -> int:
    """The HTTP status of a request without any login."""
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def signed_in(app, login: tuple[str, str]) -> httpx.Client:
    """An HTTP session with the login cookie, as a browser has after the login form."""
    client = httpx.Client(base_url=app.url, timeout=10)
    response = client.post("/login", data={"username": login[0], "password": login[1]})
    assert response.status_code == 200, response.text
    return client


def test_nothing_is_served_without_a_login(shared_app):
    url = shared_app.url
    assert status_of(url + "config") == 401
    assert status_of(url + "gradio_api/info") == 401
    body = json.dumps({"data": [], "fn_index": 0, "session_hash": "x"}).encode()
    assert status_of(url + "gradio_api/queue/join", "POST", body) == 401
    assert status_of(url + "gradio_api/call/page_load", "POST", json.dumps({"data": []}).encode()) == 401
    with pytest.raises(Exception, match="(?i)login"):
        shared_app.client()
    with pytest.raises(Exception, match="(?i)login|credentials"):
        shared_app.client(auth=("gus", "wrong"))


def test_a_guest_sees_only_their_own_conversations(shared_app):
    gus_record = guest_conversation(shared_app, "gus")
    owner_record = guest_conversation(shared_app, "ann", "the owner's notes")
    gia = shared_app.client(auth=GIA)
    model, _status, listing, *_rest, account, _note, _presets = gia.predict(api_name="/page_load")
    assert listing["choices"] == [] and "gia" in account and "guest" in account
    for foreign in (gus_record["id"], owner_record["id"]):
        # Gradio refuses an id that is not in this tab's list; the controller refuses it too (next test).
        with pytest.raises(Exception, match="does not exist|not in the list of choices"):
            gia.predict(foreign, api_name="/open_conversation")
    assert gia.predict("secret plan", api_name="/search_conversations")["choices"] == []
    # Delete and export act on the conversation open in gia's tab: none, since opening gus's was refused.
    with pytest.raises(Exception, match="Open a conversation"):
        gia.predict(api_name="/export")
    gia.predict(api_name="/delete")
    assert shared_app.store.conversations.get(gus_record["id"])["messages"][0]["content"] == "my secret plan"
    gus = shared_app.client(auth=GUS)
    listed = dict((opened_id, label) for label, opened_id in gus.predict(api_name="/page_load")[2]["choices"])
    assert listed[gus_record["id"]].endswith("my secret plan") and owner_record["id"] not in listed
    assert all(shared_app.store.conversations.get(i)["owner"] == "gus" for i in listed)
    history = gus.predict(gus_record["id"], api_name="/open_conversation")[0]
    assert history[0]["content"][0]["text"] == "my secret plan"


def test_every_conversation_handler_refuses_another_users_id(shared_app):
    """Crafted calls straight into the controller, with gus's id in gia's request."""
    controller = shared_app.controller
    record = guest_conversation(shared_app, "gus")
    gia = gr.Request(username="gia", session_hash="gia-tab")
    model = controller.models.demo_path
    edit = gr.EditData(None, {"index": 0, "value": "hijacked", "previous_value": ""})
    calls = {
        "open": lambda: controller.conversations.open(record["id"], gia),
        "rename": lambda: controller.conversations.rename(record["id"], "mine now", gia),
        "delete": lambda: controller.conversations.delete(record["id"], gia),
        "export": lambda: controller.conversations.export(record["id"], gia),
        "send": lambda: list(controller.replies.send(record["id"], {"text": "hi"}, model, *GREEDY, request=gia)),
        "regenerate": lambda: list(controller.replies.regenerate(record["id"], model, *GREEDY, request=gia)),
        "edit": lambda: list(controller.replies.edit(record["id"], model, *GREEDY, edit=edit, request=gia)),
        "previous version": lambda: controller.replies.previous_version(record["id"], gia),
        "next version": lambda: controller.replies.next_version(record["id"], gia),
    }
    for name, call in calls.items():
        with pytest.raises(gr.Error, match="does not exist") as refused:
            call()
        assert record["id"] not in str(refused.value), name
    after = shared_app.store.conversations.get(record["id"])
    assert after["title"] == record["title"] and after["messages"] == record["messages"]
    nobody = gr.Request(username=None, session_hash="anonymous")
    with pytest.raises(gr.Error, match="Sign in"):
        controller.conversations.open(record["id"], nobody)


def test_a_guest_cannot_use_server_paths_and_errors_reveal_nothing(shared_app, tmp_path: Path, tiny_vlm: Path):
    gia = shared_app.client(auth=GIA)
    gia.predict(api_name="/page_load")
    folders = shared_app.store.settings.app()["model_folders"]
    existing, missing = str(tiny_vlm), str(tmp_path / "no-such-model")
    messages = {}
    for name, api, arg in [("folder", "/add_model_folder", existing), ("folder", "/add_model_folder", missing),
                           ("gguf", "/import_gguf", existing), ("gguf", "/import_gguf", missing),
                           ("model", "/select_model", existing), ("model", "/select_model", missing)]:
        with pytest.raises(Exception) as refused:
            gia.predict(arg, api_name=api)
        messages.setdefault(name, set()).add(str(refused.value))
    assert all(len(texts) == 1 for texts in messages.values()), messages  # the same whether the path exists or not
    assert "Only the owner" in next(iter(messages["folder"])) and "not offered here" in next(iter(messages["model"]))
    with pytest.raises(Exception, match="not offered here"):
        gia.predict({"text": "hi", "files": []}, existing, *GREEDY, api_name="/send")
    with pytest.raises(Exception, match="Only the owner"):
        gia.predict(1024, 1.0, 1.0, api_name="/save_engine_settings")
    assert shared_app.store.settings.app()["model_folders"] == folders
    assert shared_app.store.conversations.list("gia")[1] == 0


def test_guests_keep_their_own_settings_and_cannot_change_the_owners(shared_app):
    gus, gia = shared_app.client(auth=GUS), shared_app.client(auth=GIA)
    gus.predict("Talk like a pirate.", 0.7, 0.9, 0, 0.0, 1.0, -1, 64, True, api_name="/save_settings")
    assert gus.predict(api_name="/page_load")[3:5] == ("Talk like a pirate.", 0.7)
    assert gia.predict(api_name="/page_load")[3:5] == ("", 0.0)
    owner = shared_app.client(auth=OWNER)
    assert owner.predict(api_name="/page_load")[3] == ""
    assert shared_app.store.settings.user("ann")["system_prompt"] == ""


def test_files_of_the_data_dir_and_outside_it_are_not_served(shared_app):
    data = shared_app.data_dir
    (data / "logs").mkdir(exist_ok=True)
    (data / "logs" / "mlx-gradio.log").write_text("log line")
    record = guest_conversation(shared_app, "gus")
    shared_app.store.settings.update_user("gus", temperature=0.5)  # the database file exists from now on
    session = signed_in(shared_app, GUS)
    targets = [data / DB_NAME, data / "logs" / "mlx-gradio.log", data / "conversations" / f"{record['id']}.json",
               Path("/etc/passwd"), Path(__file__)]
    for target in targets:
        assert target.exists()
        response = session.get(f"/gradio_api/file={target}")
        assert response.status_code == 403, (target, response.status_code)
    missing = session.get(f"/gradio_api/file={data / 'no-such-file'}")
    assert missing.status_code == 403  # the same answer whether a file exists or not
    session.close()


def test_what_was_made_without_a_login_goes_to_the_first_owner_when_logins_are_turned_on(make_controller, tmp_path,
                                                                                         caplog):
    """The name `local` stands for the one user without logins: no login may take it, and when logins come,
    that user's conversations and settings belong to the first owner, who is told so."""
    import logging

    from mlx_gradio.store import LOCAL_USER

    with pytest.raises(ValueError, match="reserved"):
        Access(owners=dict([OWNER]), guests={LOCAL_USER: "pw"})
    data_dir = tmp_path / "data"
    alone = make_controller(data_dir=data_dir)
    made = []
    for n in range(3):
        record = chat.new_conversation(LOCAL_USER, alone.models.demo_path)
        chat.add_user_message(record, f"plan {n}", [])
        made.append(alone.store.conversations.save(record))
    alone.store.settings.update_user(LOCAL_USER, system_prompt="Answer in French.")
    alone.shutdown()
    with caplog.at_level(logging.INFO, logger="mlx_gradio"):
        shared = make_controller(data_dir=data_dir, access=Access(owners=dict([OWNER, ("bob", "pw")]),
                                                                  guests=dict([GUS])))
    ann, gus = gr.Request(username="ann", session_hash="a"), gr.Request(username="gus", session_hash="g")
    assert {s.id for s in shared.conversations.page(shared.access.caller(ann)).summaries} == {c["id"] for c in made}
    assert not shared.conversations.page(shared.access.caller(gus)).summaries
    assert shared.store.conversations.list(LOCAL_USER)[1] == 0
    assert shared.store.settings.user("ann")["system_prompt"] == "Answer in French."
    assert "3 conversation(s) made without a login now belong to ann" in caplog.text
    assert any("now belong to ann" in n for n in shared.page_load(ann).notices)
    assert shared.page_load(gus).notices == []


def test_a_guest_sees_model_names_never_the_owners_paths_or_urls(make_controller, tiny_llama: Path, tmp_path: Path):
    """What the Chat tab's handlers hand Gradio for a guest (the page, the picker, the status line, replies,
    errors, exports) names models, never a folder or URL of the owner's machine."""
    import shutil

    from mlx_gradio.ui.chat_events import ChatEvents

    controller = make_controller(access=Access(owners=dict([OWNER]), guests=dict([GUS])))
    ann, gus = gr.Request(username="ann", session_hash="a"), gr.Request(username="gus", session_hash="g")
    copy = tmp_path / "models" / "second-llama"
    shutil.copytree(tiny_llama, copy)
    controller.models.add_folder(str(copy), ann)
    controller.models.select(str(tiny_llama), ann)  # the owners' model again
    endpoint = controller.servers.add_endpoint("Office box", "http://127.0.0.1:9/v1", "", "m", False, ann)
    events = ChatEvents(controller)
    secrets = [str(tmp_path), str(tiny_llama), "http://", "https://", "/home/", "/root/"]

    def shown(value: object) -> str:
        text = json.dumps(value, default=repr, ensure_ascii=False)
        assert not [s for s in secrets if s in text], text
        return text

    page = events.page_load(gus)
    shown(page)
    choices = {value: label for label, value in page[0]["choices"]}
    assert {"tiny-random-llama", "second-llama", f"endpoint:{endpoint['id']}"} <= set(choices)
    assert page[0]["value"] == "tiny-random-llama"
    views = list(events.send(gus, "", {"text": "Hello"}, "tiny-random-llama", *GREEDY))
    assert "Hello" in shown(views[-1][0])
    conversation_id = views[-1][2]
    shown(events.show_settings(gus, conversation_id, "tiny-random-llama"))
    exported = Path(events.export(gus, conversation_id)["value"]).read_text()
    shown(exported)
    assert '"model": "tiny-random-llama"' in exported
    # An endpoint: the status line and its failure name it, not its URL.
    assert "Office box" in shown(events.pick_model(gus, conversation_id, f"endpoint:{endpoint['id']}"))
    with pytest.raises(gr.Error) as failed:
        list(events.send(gus, conversation_id, {"text": "Still there?"}, f"endpoint:{endpoint['id']}", *GREEDY))
    shown(failed.value.message)
    # A folder that breaks after the guest picked it: the sentence names it, not where it is.
    list(events.send(gus, "", {"text": "Hi"}, "second-llama", *GREEDY))
    controller.engine.unload(str(copy)).result()  # it must be read from its folder again
    (copy / "config.json").unlink()
    with pytest.raises(gr.Error) as failed:
        list(events.send(gus, "", {"text": "And now?"}, "", *GREEDY))
    assert "second-llama" in shown(failed.value.message)
    with pytest.raises(gr.Error) as failed:
        list(events.send(ann, "", {"text": "And now?"}, str(copy), *GREEDY))
    assert str(copy) in failed.value.message  # the owner sees where to look


def test_a_guest_has_one_reply_at_a_time_and_a_bound_on_conversations(make_controller, tiny_llama: Path,
                                                                       monkeypatch):
    """So that guests cannot starve the owner: one reply each (a second tab waits its turn), a cap on replies under
    way for everyone, the owner is not bound, and a guest keeps at most so many conversations."""
    from mlx_gradio.controller import replies as replies_module

    controller = make_controller(access=Access(owners=dict([OWNER]), guests=dict([GUS, GIA, ("gil", "gil-pw")])))
    replies = controller.replies
    tab_1, tab_2 = gr.Request(username="gus", session_hash="g1"), gr.Request(username="gus", session_hash="g2")
    gia = gr.Request(username="gia", session_hash="i")
    ann = [gr.Request(username="ann", session_hash=f"a{n}") for n in range(2)]
    model = "tiny-random-llama"
    first = replies.send("", {"text": "Tell me a story."}, model, *GREEDY, request=tab_1)
    next(first)  # gus's reply holds its slot from here on
    with pytest.raises(gr.Error, match="one at a time for each guest"):
        list(replies.send("", {"text": "And another?"}, model, *GREEDY, request=tab_2))
    other = replies.send("", {"text": "Hello"}, model, *GREEDY, request=gia)  # another guest has a turn
    next(other)
    # As many replies under way as the app takes: a guest is told to try again later, before anything is kept.
    monkeypatch.setattr(replies_module, "MAX_REPLIES", 2)
    gil = gr.Request(username="gil", session_hash="l")
    with pytest.raises(gr.Error, match="The app is busy: 2 replies are under way.*Try again in a minute"):
        list(replies.send("", {"text": "Me too"}, model, *GREEDY, request=gil))
    assert controller.store.conversations.list("gil")[1] == 0
    owners = [replies.send("", {"text": f"Owner {n}"}, model, *GREEDY, request=ann[n]) for n in range(2)]
    for reply in owners:
        next(reply)  # the owner is bound neither by one at a time nor by the cap
    monkeypatch.setattr(replies_module, "MAX_REPLIES", 64)
    for reply in (first, other, *owners):
        list(reply)
    assert len(list(replies.send("", {"text": "Now?"}, model, *GREEDY, request=tab_2))) > 1  # its turn now
    monkeypatch.setattr(replies_module, "MAX_GUEST_CONVERSATIONS", 2)
    with pytest.raises(gr.Error, match="You keep 2 conversations, the most a guest may"):
        list(replies.send("", {"text": "A third?"}, model, *GREEDY, request=tab_1))
    kept = controller.store.conversations.list("gus")[0]
    list(replies.send(kept[0].id, {"text": "In one I have"}, model, *GREEDY, request=tab_1))  # still fine
    # What a guest uploads stays on this machine's disk: so much in all.
    monkeypatch.setattr(replies_module, "MAX_GUEST_UPLOAD_BYTES", 1000)
    notes = controller.conversations.upload_dir / "notes.txt"
    notes.parent.mkdir(parents=True, exist_ok=True)
    notes.write_text("a line of notes\n" * 40)  # 640 bytes
    list(replies.send(kept[0].id, {"text": "Read this", "files": [str(notes)]}, model, *GREEDY, request=tab_1))
    before = controller.store.conversations.get(kept[0].id)["messages"]
    with pytest.raises(gr.Error, match="a guest may upload"):
        list(replies.send(kept[0].id, {"text": "And this", "files": [str(notes)]}, model, *GREEDY, request=tab_1))
    assert controller.store.conversations.get(kept[0].id)["messages"] == before
    list(replies.send("", {"text": "And this", "files": [str(notes)]}, model, *GREEDY, request=ann[0]))  # no bound


def test_guests_replies_update_the_page_less_often_the_more_stream_at_once(make_controller):
    """Many guests streaming at once share the page's work; an owner's reply keeps every update."""
    from mlx_gradio.controller.replies import STREAM_INTERVAL_S, ActiveReply

    replies = make_controller().replies
    streaming = [ActiveReply(f"guest{n}", f"s{n}", owner=False, streaming=True) for n in range(3)]
    waiting = ActiveReply("gil", "w", owner=False)  # a reply that waits for the model sends no updates
    owner = ActiveReply("ann", "a", owner=True, streaming=True)
    replies._active = {str(n): active for n, active in enumerate([*streaming, waiting, owner])}
    assert replies._stream_interval(streaming[0]) == pytest.approx(4 * STREAM_INTERVAL_S)
    assert replies._stream_interval(owner) == STREAM_INTERVAL_S
    replies._active = {"0": streaming[0]}
    assert replies._stream_interval(streaming[0]) == STREAM_INTERVAL_S
