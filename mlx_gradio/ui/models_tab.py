"""The Models tab (owners only): search the Hub, see whether a model fits. Layout, wiring, adapters."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..controller import Controller
from ..controller.hub import TASKS
from ..hub import SORTS
from . import hub_render


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
        view = self.controller.hub.details(repo_id, context, request)
        shape = view.details.shape
        slider = gr.update(visible=True, minimum=min(256, shape.context_length), maximum=shape.context_length,
                           value=view.fit.context)
        return (hub_render.details_markdown(view.details), slider, hub_render.fit_markdown(view.fit),
                view.details.repo_id)

    def refit(self, request: gr.Request, repo_id: str, context: Any) -> str:
        """The fit again at another context length."""
        if not repo_id:
            return ""
        return hub_render.fit_markdown(self.controller.hub.details(repo_id, context, request).fit)


def build_models_tab(controller: Controller) -> None:
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
        max_size = gr.Number(label="Largest size in GB (0 = any)", value=0, minimum=0)
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
            context = gr.Slider(256, 32768, step=256, label="Context length (tokens)", visible=False,
                                elem_id="hub-context")
            fit = gr.Markdown(elem_id="hub-fit")

    filters = [query, author, task, max_size, sort]
    paging = [results, page_label, previous, following, page]
    # A failed search shows its sentence in a toast; the table keeps what it showed ("minimal" progress).
    gr.on([query.submit, search.click], events.first_page, filters, paging, api_name="hub_search",
          show_progress="minimal")
    previous.click(events.previous_page, [*filters, page], paging, api_name="hub_previous_page",
                   show_progress="minimal")
    following.click(events.next_page, [*filters, page], paging, api_name="hub_next_page", show_progress="minimal")
    results.select(events.select, None, [details, context, fit, selected], api_visibility="private")
    context.release(events.refit, [selected, context], fit, api_name="hub_fit")
