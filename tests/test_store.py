"""The store on real files: settings, one file per conversation, migration, failed writes, corrupt files."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlx_gradio.chats import chat
from mlx_gradio.chats.conversation_store import ConversationStore
from mlx_gradio.errors import ConversationNotFound, StoreWriteFailed
from mlx_gradio.store import DB_NAME, DEFAULT_APP_SETTINGS, DEFAULT_USER_SETTINGS, LOCAL_USER, Store
from tests.conftest import fill_disk

ROOT = Path(__file__).resolve().parents[1]
LEGACY = Path(__file__).resolve().parent / "data" / "legacy-mlx-gradio.json"


def conversation(owner: str = "ann", text: str = "hello", replies: int = 1) -> dict:
    record = chat.new_conversation(owner, "/models/m")
    for i in range(replies):
        chat.add_user_message(record, f"{text} {i}", [])
        chat.add_reply_version(record, len(record["messages"]), f"reply {i}", None, "/models/m")
    return record


def test_settings_are_per_user_with_defaults_and_survive_reopening(tmp_path: Path):
    store = Store(tmp_path)
    assert store.settings.app() == DEFAULT_APP_SETTINGS
    assert store.settings.user("ann") == DEFAULT_USER_SETTINGS
    store.settings.update_app(model="/models/m")
    store.settings.update_user("ann", temperature=0.9, system_prompt="Be brief.")
    store.close()
    reopened = Store(tmp_path)
    assert reopened.settings.user("ann")["temperature"] == 0.9
    assert reopened.settings.user("ann")["model"] == "/models/m"  # a new user starts with the owner's model
    assert reopened.settings.user("bob")["temperature"] == DEFAULT_USER_SETTINGS["temperature"]
    assert reopened.settings.user("bob")["system_prompt"] == ""


def test_each_conversation_is_its_own_file_and_the_list_is_per_owner(tmp_path: Path):
    store = Store(tmp_path)
    first = store.conversations.save(conversation("ann", "first"))
    time.sleep(0.01)
    second = store.conversations.save(conversation("ann", "second"))
    store.conversations.save(conversation("bob", "bob's"))
    files = {p.name for p in (tmp_path / "conversations").glob("*.json")}
    assert {f"{first['id']}.json", f"{second['id']}.json"} <= files and len(files) == 3
    summaries, total = store.conversations.list("ann")
    assert total == 2 and [s.id for s in summaries] == [second["id"], first["id"]]
    assert store.conversations.list("bob")[1] == 1
    store.conversations.save({**store.conversations.get(first["id"]), "title": "Renamed"})
    store.close()
    reopened = Store(tmp_path)
    assert reopened.conversations.get(first["id"])["title"] == "Renamed"
    assert reopened.conversations.list("ann")[0][0].title == "Renamed"
    reopened.conversations.delete(second["id"])
    with pytest.raises(ConversationNotFound):
        reopened.conversations.get(second["id"])
    with pytest.raises(ConversationNotFound):
        reopened.conversations.delete(second["id"])


def test_search_finds_titles_and_message_text_case_insensitively(tmp_path: Path):
    store = Store(tmp_path)
    dragons = conversation("ann", "Tell me about DRAGONS")
    chat.add_user_message(dragons, 'He said "line\none" ünïcode', [])
    store.conversations.save(dragons)
    store.conversations.save(conversation("ann", "weather"))
    store.conversations.save(conversation("bob", "dragons too"))
    assert [s.id for s in store.conversations.list("ann", "dragons")[0]] == [dragons["id"]]
    assert store.conversations.list("ann", "reply 0")[1] == 2  # message text, not only titles
    assert store.conversations.list("ann", 'said "LINE one"')[1] == 1  # any whitespace matches a space
    assert store.conversations.list("ann", "ÜNÏCODE")[1] == 1
    assert store.conversations.list("ann", "nothing like this")[1] == 0


def test_conversation_ids_are_never_paths(tmp_path: Path):
    store = Store(tmp_path)
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({"messages": []}))
    for bad in ["../secret", "../../etc/passwd", "", None, 42, "A" * 32]:
        with pytest.raises(ConversationNotFound):
            store.conversations.get(bad)
        assert store.conversations.owner_of(bad) is None
    with pytest.raises(ConversationNotFound):
        store.conversations.save({"id": "../secret", "messages": []})
    assert json.loads(outside.read_text()) == {"messages": []}


def test_returned_data_never_aliases_what_the_store_holds(tmp_path: Path):
    store = Store(tmp_path)
    saved = store.conversations.save(conversation())
    loaded = store.conversations.get(saved["id"])
    loaded["messages"].append({"role": "user", "content": "not saved"})
    assert len(store.conversations.get(saved["id"])["messages"]) == 2
    settings = store.settings.app()
    settings["model_folders"].append("/not/saved")
    assert store.settings.app()["model_folders"] == []


def test_lone_surrogates_are_stored_safely(tmp_path: Path):
    store = Store(tmp_path)
    record = conversation(text="broken \ud800 pair and a real one \U0001f642")
    store.conversations.save(record)
    store.settings.update_user("ann", system_prompt="odd \udfff")
    store.close()
    reopened = Store(tmp_path)
    assert reopened.conversations.get(record["id"])["messages"][0]["content"].startswith("broken \ud800 pair")
    assert reopened.settings.user("ann")["system_prompt"] == "odd \udfff"
    assert chat.clean_text("a \ud83d\ude42 b \ud800") == "a \U0001f642 b \ufffd"


def test_a_corrupt_conversation_file_is_moved_aside_alone(tmp_path: Path):
    store = Store(tmp_path)
    good = store.conversations.save(conversation(text="good"))
    bad = store.conversations.save(conversation(text="bad"))
    store.close()
    (tmp_path / "conversations" / f"{bad['id']}.json").write_text('{"id": "cut off in the midd')
    reopened = Store(tmp_path)
    assert [s.id for s in reopened.conversations.list("ann")[0]] == [good["id"]]
    [aside] = (tmp_path / "conversations").glob("*.corrupt-*")
    assert aside.read_text().startswith('{"id": "cut off')
    notices = reopened.take_notices()
    assert len(notices) == 1 and str(aside) in notices[0]
    assert reopened.take_notices() == []


def test_a_file_broken_while_running_is_moved_aside_when_opened(tmp_path: Path):
    store = Store(tmp_path)
    record = store.conversations.save(conversation())
    (tmp_path / "conversations" / f"{record['id']}.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(ConversationNotFound, match="moved aside"):
        store.conversations.get(record["id"])
    assert store.conversations.list("ann")[1] == 0
    assert list((tmp_path / "conversations").glob("*.corrupt-*"))


def test_a_file_that_cannot_be_read_just_now_is_left_as_it_is(tmp_path: Path):
    """EACCES or EMFILE cannot be made here for root; a folder where the file was gives the same kind of error
    (an OSError that is not "no such file"). The conversation is not moved aside as corrupt, and reads again
    once the file is back."""
    from mlx_gradio.errors import StoreReadFailed

    store = Store(tmp_path)
    record = store.conversations.save(conversation(text="keep me"))
    path = tmp_path / "conversations" / f"{record['id']}.json"
    kept = tmp_path / "kept.json"
    path.replace(kept)
    path.mkdir()
    with pytest.raises(StoreReadFailed, match="could not be read just now"):
        store.conversations.get(record["id"])
    assert store.conversations.list("ann")[1] == 1  # still listed
    store.close()
    reopened = Store(tmp_path)  # and at a start: its row from the index stands in
    assert [s.title for s in reopened.conversations.list("ann")[0]] == ["keep me 0"]
    assert not list((tmp_path / "conversations").glob("*.corrupt-*")) and reopened.take_notices() == []
    path.rmdir()
    kept.replace(path)
    assert reopened.conversations.get(record["id"])["messages"] == record["messages"]


def test_corrupt_settings_are_moved_aside_and_conversations_still_load(tmp_path: Path):
    store = Store(tmp_path)
    record = store.conversations.save(conversation())
    store.close()
    (tmp_path / DB_NAME).write_text('{"app": {"1": {"model": "/m"}')  # cut off mid-write by an old version
    reopened = Store(tmp_path)
    [aside] = tmp_path.glob(f"{DB_NAME}.corrupt-*")
    assert aside.read_text().startswith('{"app"')
    assert reopened.settings.app() == DEFAULT_APP_SETTINGS
    assert reopened.conversations.get(record["id"])["messages"]
    assert any(str(aside) in notice for notice in reopened.take_notices())


def test_the_index_is_rebuilt_from_changed_files_after_a_crash(tmp_path: Path):
    store = Store(tmp_path)
    kept = store.conversations.save(conversation(text="kept"))
    store.close()  # writes the index
    # What a crash leaves: files written after the index, without the index knowing.
    later = ConversationStore(tmp_path / "conversations")
    added = later.save(conversation(text="added later"))
    later.save({**later.get(kept["id"]), "title": "Changed later"})
    reopened = Store(tmp_path)  # `later` never wrote its index
    titles = {s.id: s.title for s in reopened.conversations.list("ann")[0]}
    assert titles == {kept["id"]: "Changed later", added["id"]: "added later 0"}


def test_a_database_from_the_previous_version_is_migrated_with_nothing_lost(tmp_path: Path):
    shutil.copy(LEGACY, tmp_path / DB_NAME)
    old = json.loads(LEGACY.read_text())
    store = Store(tmp_path)
    settings = store.settings.user(LOCAL_USER)
    assert settings["system_prompt"] == "Answer in French." and settings["temperature"] == 0.7
    assert settings["seed"] == 7 and settings["max_tokens"] == 64 and settings["model"] == "/models/tiny-qwen2-vl"
    assert store.settings.app()["model_folders"] == ["/models/tiny-qwen2-vl"]
    summaries, total = store.conversations.list(LOCAL_USER)
    assert total == 3
    for before in old["conversations"].values():
        after = store.conversations.get(before["id"])
        assert after["title"] == before["title"] and after["updated"] == before["updated"]
        assert [m["role"] for m in after["messages"]] == [m["role"] for m in before["messages"]]
        for was, now in zip(before["messages"], after["messages"], strict=True):
            if was["role"] == "user":
                assert now["content"] == was["content"] and now["images"] == was["images"]
            else:
                assert chat.current_version(now)["content"] == was["content"]
                assert chat.current_version(now)["stats"] == was["stats"]
    assert "conversations" not in json.loads((tmp_path / DB_NAME).read_text())
    assert list(tmp_path.glob(f"{DB_NAME}.before-migration-*"))
    store.close()
    again = Store(tmp_path)  # a second start finds nothing to migrate and keeps everything
    assert again.conversations.list(LOCAL_USER)[1] == 3
    assert len(list(tmp_path.glob(f"{DB_NAME}.before-migration-*"))) == 1


def test_a_write_to_a_full_disk_changes_nothing_and_later_writes_work(small_disk: Path):
    store = Store(small_disk)
    record = store.conversations.save(conversation(text="before"))
    store.settings.update_user("ann", temperature=0.5)
    filler = fill_disk(small_disk)
    grown = {**record, "title": "after", "messages": [*record["messages"], {"role": "user", "content": "x" * 50_000}]}
    with pytest.raises(StoreWriteFailed, match="could not be written"):
        store.conversations.save(grown)
    with pytest.raises(StoreWriteFailed):
        store.settings.update_user("ann", temperature=0.9, system_prompt="y" * 50_000)
    with pytest.raises(StoreWriteFailed):
        store.conversations.save(conversation(text="new"))
    # Memory is what the disk holds: the old title, the old settings, no new conversation.
    assert store.conversations.get(record["id"])["title"] == record["title"]
    assert store.conversations.list("ann")[1] == 1
    assert store.settings.user("ann")["temperature"] == 0.5
    assert not [p for p in small_disk.rglob("*.tmp")]
    filler.unlink()
    store.conversations.save(grown)
    store.settings.update_user("ann", temperature=0.9)
    store.close()
    reopened = Store(small_disk)
    assert reopened.conversations.get(record["id"])["title"] == "after"
    assert reopened.settings.user("ann")["temperature"] == 0.9


def test_concurrent_writers_from_many_threads(tmp_path: Path):
    store = Store(tmp_path)

    def writer(n: int) -> None:
        for _ in range(10):
            store.conversations.save(conversation(f"user{n % 2}"))
            store.settings.update_user(f"user{n % 2}", seed=n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    reopened = Store(tmp_path)
    assert reopened.conversations.list("user0")[1] == 40 and reopened.conversations.list("user1")[1] == 40
    assert not list(tmp_path.rglob("*.tmp"))


def test_killing_the_process_mid_write_never_breaks_a_file(tmp_path: Path):
    script = (
        "import sys; from pathlib import Path; from mlx_gradio.store import Store; from mlx_gradio.chats import chat\n"
        "s = Store(Path(sys.argv[1]))\n"
        "c = chat.new_conversation('ann')\n"
        "c['messages'] = [{'role': 'user', 'content': 'x' * 2000, 'images': []}] * 50\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    s.conversations.save(c)\n"
        "    s.settings.update_user('ann', seed=len(c['messages']))\n"
    )
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.7)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = Store(tmp_path)
        assert store.take_notices() == []
        assert store.conversations.list("ann")[1] >= 1
        store.close()


def test_a_migration_that_cannot_finish_loses_nothing_and_runs_again(small_disk: Path):
    shutil.copy(LEGACY, small_disk / DB_NAME)
    filler = fill_disk(small_disk)
    store = Store(small_disk)
    notices = store.take_notices()
    assert any("tried again at the next start" in notice for notice in notices)
    assert "conversations" in json.loads((small_disk / DB_NAME).read_text())  # the old tables are still there
    assert not list(small_disk.glob(f"{DB_NAME}.before-migration-*"))
    filler.unlink()
    again = Store(small_disk)
    assert again.conversations.list(LOCAL_USER)[1] == 3
    assert again.settings.user(LOCAL_USER)["system_prompt"] == "Answer in French."
