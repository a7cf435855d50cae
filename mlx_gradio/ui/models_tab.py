"""The Models tab (owners only): search the Hub, see whether a model fits, download it, manage what is
on this machine. Layout, wiring, adapters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from ..controller import Controller
from ..controller.hub import TASKS
from ..controller.library import HF_PREFIX
from ..hub.search import SORTS
from . import hub_render, render
from .chat_events import ChatHandles, picker, picker_choices
from .fields import checked


class ModelsEvents:
    """Handlers for the Models tab; `gr.Request` and event data come first (Gradio fills them in there)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def search(self, request: gr.Request, query: str, author: str, task: str, max_size: Any, sort: str,
               page: Any) -> tuple:
        """Results table, page label, previous/next buttons and the page shown."""
        view = self.controller.hub.search(query, author, task, max_size, sort, page, request)
        found = view.page
        return (hub_render.result_rows(found.models, view.fits),
                f"Page {found.page + 1}" if found.models else "No MLX models match.",
                gr.update(interactive=found.page > 0), gr.update(interactive=found.has_more), found.page)

    def first_page(self, request: gr.Request, query: str, author: str, task: str, max_size: Any, sort: str) -> tuple:
        return self.search(request, query, author, task, max_size, sort, 0)

    def previous_page(self, request: gr.Request, query: str, author: str, task: str, max_size: Any, sort: str,
                      page: Any) -> tuple:
        return self.search(request, query, author, task, max_size, sort, max(0, (page or 0) - 1))

    def next_page(self, request: gr.Request, query: str, author: str, task: str, max_size: Any, sort: str,
                  page: Any) -> tuple:
        return self.search(request, query, author, task, max_size, sort, (page or 0) + 1)

    def select(self, request: gr.Request, event: gr.SelectData) -> tuple:
        """A row was picked: its details, a context slider for its length, its fit, and its id."""
        row = event.row_value or []
        return self.show(request, row[0] if row else "", 0)

    def show(self, request: gr.Request, repo_id: str, context: Any) -> tuple:
        """Details, context slider, fit, the repo id, and the Download / Use in chat buttons."""
        view = self.controller.hub.details(repo_id, context, request)
        shape = view.details.shape
        slider = gr.update(visible=True, minimum=min(256, shape.context_length), maximum=shape.context_length,
                           value=view.fit.context)
        on_disk = self.controller.library.downloaded(view.details.repo_id, request)
        download = gr.update(visible=True, value=("Download again" if on_disk else "Download")
                             + f" ({hub_render.gb(view.details.download_bytes)})")
        return (hub_render.details_markdown(view.details), slider, hub_render.fit_markdown(view.fit),
                view.details.repo_id, download, gr.update(visible=on_disk))

    def refit(self, request: gr.Request, repo_id: str, context: Any) -> str:
        """The fit again at another context length."""
        if not repo_id:
            return ""
        return hub_render.fit_markdown(self.controller.hub.details(repo_id, context, request).fit)


    # --- downloads --------------------------------------------------------------------------

    def download(self, request: gr.Request, repo_id: str) -> tuple:
        """Start (or resume) a download; the timer then shows its progress, and its end even when that comes
        before the first tick (a small model, or files already in the cache)."""
        started = self.controller.downloads.start(repo_id, request)
        active = {d.repo_id for d in self.controller.downloads.list(request) if d.active} | {started.repo_id}
        return (*self.downloads(request), gr.Timer(active=True), sorted(active))

    def cancel(self, request: gr.Request, repo_id: str) -> tuple:
        self.controller.downloads.cancel(repo_id, request)
        return self.downloads(request)

    def resume(self, request: gr.Request, repo_id: str) -> tuple:
        return self.download(request, repo_id)

    def forget(self, request: gr.Request, repo_id: str) -> tuple:
        self.controller.downloads.forget(repo_id, request)
        return self.downloads(request)

    def downloads(self, request: gr.Request) -> tuple:
        """(downloads list, the download picker)."""
        found = self.controller.downloads.list(request)
        repo_ids = [d.repo_id for d in found]
        return hub_render.downloads_html(found), gr.update(choices=repo_ids, value=repo_ids[0] if repo_ids else None)

    def tick(self, request: gr.Request, was_active: list, shown: str, context: Any) -> tuple:
        """Every second while something downloads: progress; when one ends, the local list, the chat picker,
        and the details (Download again, Use in chat) if it is the model shown there."""
        found = self.controller.downloads.list(request)
        active = sorted(d.repo_id for d in found if d.active)
        ended = set(was_active or []) - set(active)
        refresh = self.local(request) + (picker_choices(self.controller),) if ended else (gr.skip(),) * 3
        if shown and shown in ended:
            details, slider, fit, _, download, use = self.show(request, shown, context)
            shown_again = (details, slider, fit, download, use)
        else:
            shown_again = (gr.skip(),) * 5
        return (hub_render.downloads_html(found), *refresh, *shown_again, gr.Timer(active=bool(active)), active)

    # --- on this machine --------------------------------------------------------------------

    def local(self, request: gr.Request) -> tuple:
        """(local models table, their keys)."""
        entries = self.controller.library.list(request)
        return hub_render.local_rows(entries), [e.key for e in entries]

    def pick_local(self, event: gr.SelectData, keys: list) -> tuple:
        """A local model was picked: remember its key, name it, show its buttons."""
        key = picked(event, keys)
        name = str((event.row_value or [""])[0])
        return key, f"**{name}**" if key else "", gr.update(visible=bool(key)), gr.update(visible=False)

    def use(self, request: gr.Request, key: str) -> tuple:
        """Use a local model in the chat: select it there and switch to the Chat tab."""
        path = self.controller.library.use(key, request)
        return self._to_chat(request, path)

    def use_download(self, request: gr.Request, repo_id: str) -> tuple:
        """Use a model just downloaded (the one shown in the details) in the chat."""
        return self.use(request, f"{HF_PREFIX}{repo_id}")

    def _to_chat(self, request: gr.Request, path: str) -> tuple:
        models = self.controller.models.available()
        return (gr.Tabs(selected="chat"), picker(models, path),
                render.status_markdown(self.controller.models.status(request)))

    def ask_delete(self, request: gr.Request, key: str) -> tuple:
        """Say what Delete frees and ask to confirm."""
        view = self.controller.library.plan_delete(key, request)
        what = (f"Delete **{view.name}**? This frees {hub_render.gb(view.freed_bytes)} on disk." if view.removes_files
                else f"Take **{view.name}** off the list? Its folder stays where it is.")
        return what, gr.update(visible=True)

    def delete(self, request: gr.Request, key: str) -> tuple:
        """Delete after the confirmation; refresh the list and the chat picker."""
        self.controller.library.delete(key, request)
        return (*self.local(request), "", gr.update(visible=False), gr.update(visible=False), "",
                picker_choices(self.controller))

    # --- GGUF files from LM Studio and Ollama ------------------------------------------------

    def other_apps(self, request: gr.Request) -> tuple:
        """(their table, their paths)."""
        found = self.controller.library.other_apps(request)
        return hub_render.gguf_rows(found), [f.path for f in found]

    def pick_gguf(self, event: gr.SelectData, paths: list) -> tuple:
        path = picked(event, paths)
        return path, gr.update(interactive=bool(path))

    def import_gguf(self, request: gr.Request, path: str) -> Iterator[tuple]:
        """Convert the picked file; then it is on the local list and picked in the chat."""
        for models, selected, note in self.controller.library.import_found(path, request):
            if models is None:
                yield note, gr.skip(), gr.skip(), gr.skip()
            else:
                yield (f"Imported as {selected}.", picker(models, selected), *self.local(request))

    # --- token ------------------------------------------------------------------------------

    def save_token(self, request: gr.Request, token: str) -> tuple:
        return "", token_line(self.controller.hub.sign_in(token, request))

    def sign_out(self, request: gr.Request) -> str:
        return token_line(self.controller.hub.sign_out(request))

    def load(self, request: gr.Request) -> tuple:
        """What the tab shows when the page opens (owners only; guests do not see the tab)."""
        if not self.controller.is_owner(request):
            return (gr.skip(),) * 9
        found = self.controller.downloads.list(request)
        active = sorted(d.repo_id for d in found if d.active)
        return (*self.local(request), *self.downloads(request), token_line(self.controller.hub.token_hint(request)),
                gr.Timer(active=bool(active)), active, *self.other_apps(request))


def picked(event: gr.SelectData, values: list) -> str:
    """The value kept for the table row a click picked ("" if the table changed meanwhile)."""
    row = event.index[0] if isinstance(event.index, list | tuple) else event.index
    return values[row] if isinstance(row, int) and 0 <= row < len(values) else ""


def token_line(hint: str) -> str:
    return (f"A token is set: `{hint}`." if hint
            else "No token set: public models only. Gated and private models need one.")


def build_models_tab(controller: Controller, blocks: gr.Blocks, chat: ChatHandles) -> None:
    """Lay out the Models tab inside the current Blocks context and wire it to the controller."""
    events = ModelsEvents(controller)
    page = gr.State(0)
    selected = gr.State("")
    with gr.Row(equal_height=True):
        query = gr.Textbox(show_label=False, placeholder="Search MLX models on the Hugging Face Hub (Enter searches)",
                           scale=5, elem_id="hub-query")
        search = gr.Button("Search", variant="primary", scale=1, elem_id="hub-search")
    with gr.Row(equal_height=True):
        author = gr.Textbox(label="Author", placeholder="e.g. mlx-community", max_lines=1)
        task = gr.Dropdown(list(TASKS), value="any", label="Task")
        max_size = checked(gr.Number(label="Largest size in GB (0 = any)", value=0, minimum=0))
        sort = gr.Dropdown(list(SORTS), value="downloads", label="Sort by")
    results = gr.Dataframe(headers=hub_render.COLUMNS, interactive=False, wrap=True, elem_id="hub-results")
    with gr.Row(equal_height=True):
        previous = gr.Button("‹ Previous", size="sm", interactive=False)
        page_label = gr.Markdown(elem_id="hub-page")
        following = gr.Button("Next ›", size="sm", interactive=False)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            details = gr.Markdown("*Pick a model in the results to see its details.*", elem_id="hub-details")
        with gr.Column(scale=2):
            context = checked(gr.Slider(256, 32768, step=256, label="Context length (tokens)", visible=False,
                                        elem_id="hub-context"))
            fit = gr.Markdown(elem_id="hub-fit")
            with gr.Row():
                download = gr.Button("Download", variant="primary", visible=False, elem_id="hub-download")
                use_downloaded = gr.Button("Use in chat", visible=False, elem_id="hub-use")

    gr.Markdown("### Downloads")
    downloads = gr.HTML(elem_id="downloads")
    with gr.Row(equal_height=True):
        download_pick = gr.Dropdown(label="Download", choices=[], scale=3, elem_id="download-pick")
        cancel = gr.Button("Cancel", size="sm", elem_id="download-cancel")
        resume = gr.Button("Resume", size="sm", elem_id="download-resume")
        forget = gr.Button("Remove from list", size="sm")
    ticker = gr.Timer(1.0, active=False)
    active = gr.State([])

    gr.Markdown("### On this machine")
    local = gr.Dataframe(headers=hub_render.LOCAL_COLUMNS, interactive=False, wrap=True, elem_id="local-models")
    local_keys = gr.State([])
    local_key = gr.State("")
    with gr.Row(equal_height=True):
        local_name = gr.Markdown(elem_id="local-selected")
        with gr.Row(visible=False) as local_buttons:
            use_local = gr.Button("Use in chat", size="sm", variant="primary", elem_id="local-use")
            delete_local = gr.Button("Delete…", size="sm", variant="stop", elem_id="local-delete")
    with gr.Row(visible=False, equal_height=True) as confirm_row:
        confirm_text = gr.Markdown(elem_id="delete-question")
        confirm = gr.Button("Delete", variant="stop", size="sm", elem_id="delete-confirm")
        keep = gr.Button("Keep", size="sm")

    with gr.Accordion("GGUF files from LM Studio and Ollama", open=False):
        gguf_table = gr.Dataframe(headers=hub_render.GGUF_COLUMNS, interactive=False, wrap=True, elem_id="gguf-files")
        gguf_paths = gr.State([])
        gguf_path = gr.State("")
        with gr.Row():
            look = gr.Button("Look again", size="sm")
            import_file = gr.Button("Import the picked file", size="sm", variant="primary", interactive=False,
                                    elem_id="gguf-import")
        import_note = gr.Markdown(elem_id="gguf-note")

    with gr.Accordion("Hugging Face token", open=False):
        token_status = gr.Markdown(elem_id="token-status")
        token = gr.Textbox(label="Token (for gated and private models; kept where `hf auth login` keeps it)",
                           type="password", placeholder="hf_…", max_lines=1)
        with gr.Row():
            save_token = gr.Button("Save token", size="sm")
            sign_out = gr.Button("Remove token", size="sm")

    filters = [query, author, task, max_size, sort]
    paging = [results, page_label, previous, following, page]
    # A failed search shows its sentence in a toast; the table keeps what it showed ("minimal" progress).
    gr.on([query.submit, search.click], events.first_page, filters, paging, api_name="hub_search",
          show_progress="minimal")
    previous.click(events.previous_page, [*filters, page], paging, api_name="hub_previous_page",
                   show_progress="minimal")
    following.click(events.next_page, [*filters, page], paging, api_name="hub_next_page", show_progress="minimal")
    detail_view = [details, context, fit, selected, download, use_downloaded]
    results.select(events.select, None, detail_view, api_visibility="private")
    context.release(events.refit, [selected, context], fit, api_name="hub_fit")

    listing = [downloads, download_pick]
    to_chat = [chat.tabs, chat.model, chat.status]
    download.click(events.download, selected, [*listing, ticker, active], api_name="download")
    use_downloaded.click(events.use_download, selected, to_chat, api_name="use_downloaded")
    cancel.click(events.cancel, download_pick, listing, api_name="cancel_download")
    resume.click(events.resume, download_pick, [*listing, ticker, active], api_name="resume_download")
    forget.click(events.forget, download_pick, listing, api_name="forget_download")
    local_view = [local, local_keys]
    ticker.tick(events.tick, [active, selected, context],
                [downloads, *local_view, chat.model, details, context, fit, download, use_downloaded, ticker, active],
                show_progress="hidden", api_visibility="private")

    local.select(events.pick_local, local_keys, [local_key, local_name, local_buttons, confirm_row],
                 api_visibility="private")
    use_local.click(events.use, local_key, to_chat, api_name="use_local_model")
    delete_local.click(events.ask_delete, local_key, [confirm_text, confirm_row], api_name="plan_delete")
    confirm.click(events.delete, local_key,
                  [*local_view, local_name, local_buttons, confirm_row, local_key, chat.model], api_name="delete_model")
    keep.click(lambda: gr.update(visible=False), None, confirm_row, queue=False, api_visibility="private")

    gguf_view = [gguf_table, gguf_paths]
    look.click(events.other_apps, None, gguf_view, api_name="other_apps_gguf")
    gguf_table.select(events.pick_gguf, gguf_paths, [gguf_path, import_file], api_visibility="private")
    import_file.click(events.import_gguf, gguf_path, [import_note, chat.model, *local_view],
                      api_name="import_other_gguf")

    save_token.click(events.save_token, token, [token, token_status], api_name="save_token")
    sign_out.click(events.sign_out, None, token_status, api_name="remove_token")
    blocks.load(events.load, None, [*local_view, *listing, token_status, ticker, active, *gguf_view],
                api_visibility="private")
