"""The TinyDB store on real files: settings, conversations, atomic writes, corrupt files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlx_gradio.errors import ConversationNotFound
from mlx_gradio.store import DEFAULT_SETTINGS, Store, new_conversation

ROOT = Path(__file__).resolve().parents[1]


def test_settings_have_defaults_and_survive_reopening(tmp_path: Path):
    store = Store(tmp_path / "db.json")
    assert store.settings() == DEFAULT_SETTINGS
    store.update_settings(temperature=0.9, system_prompt="Be brief.")
    store.close()
    reopened = Store(tmp_path / "db.json")
    assert reopened.settings()["temperature"] == 0.9
    assert reopened.settings()["system_prompt"] == "Be brief."
    assert reopened.settings()["max_tokens"] == DEFAULT_SETTINGS["max_tokens"]


def test_conversations_save_list_rename_delete(tmp_path: Path):
    store = Store(tmp_path / "db.json")
    first = store.save_conversation({**new_conversation("First"), "messages": [{"role": "user", "content": "hi"}]})
    time.sleep(0.01)
    second = store.save_conversation(new_conversation("Second"))
    assert [c["title"] for c in store.conversations()] == ["Second", "First"]
    store.rename_conversation(first["id"], "Renamed")
    loaded = Store(tmp_path / "db.json").conversation(first["id"])
    assert loaded["title"] == "Renamed" and loaded["messages"] == [{"role": "user", "content": "hi"}]
    store.delete_conversation(second["id"])
    with pytest.raises(ConversationNotFound):
        store.conversation(second["id"])
    with pytest.raises(ConversationNotFound):
        store.delete_conversation(second["id"])


def test_returned_conversations_are_copies(tmp_path: Path):
    store = Store(tmp_path / "db.json")
    saved = store.save_conversation(new_conversation("Copy"))
    loaded = store.conversation(saved["id"])
    loaded["messages"].append({"role": "user", "content": "not saved"})
    assert store.conversation(saved["id"])["messages"] == []


def test_corrupt_file_is_moved_aside_and_defaults_are_used(tmp_path: Path):
    path = tmp_path / "db.json"
    path.write_text('{"settings": {"1": {"temperature": 0.5}')  # cut off mid-write by an old version
    store = Store(path)
    asides = list(tmp_path.glob("db.json.corrupt-*"))
    assert len(asides) == 1 and asides[0].read_text().startswith('{"settings"')
    assert store.settings() == DEFAULT_SETTINGS
    notice = store.take_recovery_notice()
    assert notice and str(asides[0]) in notice
    assert store.take_recovery_notice() is None  # shown once
    store.update_settings(temperature=0.3)
    assert json.loads(path.read_text())["settings"]["1"]["temperature"] == 0.3


def test_concurrent_writers_from_many_threads(tmp_path: Path):
    store = Store(tmp_path / "db.json")

    def writer(n: int) -> None:
        for i in range(10):
            store.save_conversation(new_conversation(f"t{n}-{i}"))
            store.update_settings(seed=n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(Store(tmp_path / "db.json").conversations()) == 80
    assert not list(tmp_path.glob("*.tmp"))


def test_killing_the_process_mid_write_never_breaks_the_file(tmp_path: Path):
    path = tmp_path / "db.json"
    script = (
        "import sys; from mlx_gradio.store import Store, new_conversation\n"
        "s = Store(sys.argv[1])\n"
        "big = [{'role': 'user', 'content': 'x' * 2000}] * 50\n"
        "print('ready', flush=True)\n"
        "while True: s.save_conversation({**new_conversation('loop'), 'messages': big})\n"
    )
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.7)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = Store(path)
        assert store.recovered_from is None
        assert store.conversations()
        store.close()
