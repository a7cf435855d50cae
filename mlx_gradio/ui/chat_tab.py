"""The Chat tab: conversations, the model picker, the chat itself and its settings. Wiring only."""

from __future__ import annotations

import gradio as gr

from ..chats.attachments import TEXT_SUFFIXES
from ..controller import Controller
from ..controller.conversations import PAGE_SIZE
from ..controller.replies import MAX_REPLIES
from .chat_events import ChatEvents
from .fields import checked

# Replies under way at once, for every user together: the guests' cap and room for an owner's own beyond it.
REPLY_SLOTS = MAX_REPLIES + 8
# Maths as models write it: display ($$…$$, \[…\]) and inline ($…$, \(…\)).
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "\\[", "right": "\\]", "display": True},
         {"left": "$", "right": "$", "display": False}, {"left": "\\(", "right": "\\)", "display": False}]
PLACEHOLDER = ("Ask anything, or attach images and text files (drop, paste or the clip). Enter sends, "
               "Shift+Enter adds a line.")


def build_chat_tab(controller: Controller, blocks: gr.Blocks) -> tuple[gr.Dropdown, gr.Markdown]:
    """Lay out the Chat tab inside the current Blocks context and wire it to the controller.

    Returns the model picker and its status line, which the Models tab updates too.
    """
    events = ChatEvents(controller)
    conversation_id = gr.State("")
    list_limit = gr.State(PAGE_SIZE)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=220, elem_id="sidebar"):
            new_chat = gr.Button("+ New chat", variant="primary", size="sm")
            search = gr.Textbox(show_label=False, placeholder="Search conversations", max_lines=1,
                                elem_id="conversation-search")
            conversations = gr.Radio(label="Conversations", choices=[], elem_id="conversations")
            more = gr.Button("Show more", size="sm", visible=False, elem_id="more-conversations")
            import_button = gr.UploadButton("Import a conversation (JSON)", size="sm", file_types=[".json"],
                                            elem_id="import-conversation")
            with gr.Accordion("This conversation", open=False):
                title = gr.Textbox(label="Title", max_lines=1)
                rename = gr.Button("Rename", size="sm")
                with gr.Row():
                    export = gr.Button("Export JSON", size="sm", min_width=60)
                    export_markdown = gr.Button("Export Markdown", size="sm", min_width=60)
                export_file = gr.File(label="Export", visible=False, interactive=False)
                delete = gr.Button("Delete", variant="stop", size="sm")

        with gr.Column(scale=4, min_width=420):
            with gr.Row(equal_height=True):
                model = gr.Dropdown(label="Model", choices=[], scale=3, elem_id="model-picker", allow_custom_value=True)
                status = gr.Markdown(elem_id="model-status")
            chatbot = gr.Chatbot(
                label="Chat", height="60vh", editable="user", buttons=["copy", "copy_all"],
                placeholder="Pick a model and say hello.", elem_id="chatbot",
                latex_delimiters=LATEX,
            )
            with gr.Row(elem_id="reply-info", equal_height=True):
                stats = gr.HTML(elem_id="reply-stats-line")
                with gr.Row(visible=False, elem_id="versions") as versions:
                    previous = gr.Button("‹", size="sm", min_width=30, elem_id="previous-version")
                    version = gr.Markdown(elem_id="version-label")
                    following = gr.Button("›", size="sm", min_width=30, elem_id="next-version")
            chat_input = gr.MultimodalTextbox(
                placeholder=PLACEHOLDER, show_label=False, file_count="multiple",
                file_types=["image", "text", *sorted(TEXT_SUFFIXES)],
                sources=["upload"], elem_id="chat-input", autofocus=True,
            )
            with gr.Row():
                regenerate = gr.Button("↻ Regenerate", size="sm", elem_id="regenerate")
                continue_button = gr.Button("→ Continue", size="sm", elem_id="continue", visible=False)
                stop = gr.Button("■ Stop", size="sm")

        with gr.Column(scale=1, min_width=240):
            with gr.Accordion("Settings", open=True):
                system_prompt = gr.Textbox(label="System prompt", lines=3, placeholder="(the model's default)",
                                           elem_id="system-prompt")
                with gr.Accordion("System prompt presets", open=False, elem_id="presets"):
                    preset = gr.Dropdown(label="Use a preset", choices=[], elem_id="prompt-presets")
                    preset_name = gr.Textbox(show_label=False, placeholder="Name, to save the prompt above as a preset",
                                             max_lines=1, elem_id="preset-name")
                    with gr.Row():
                        save_preset = gr.Button("Save", size="sm", min_width=50)
                        rename_preset = gr.Button("Rename", size="sm", min_width=50)
                        delete_preset = gr.Button("Delete", size="sm", min_width=50)
                temperature = checked(gr.Slider(0, 2, step=0.05, label="Temperature"))
                top_p = checked(gr.Slider(0, 1, step=0.01, label="Top p"))
                top_k = checked(gr.Slider(0, 200, step=1, label="Top k (0 = off)"))
                min_p = checked(gr.Slider(0, 1, step=0.01, label="Min p"))
                repetition_penalty = checked(gr.Slider(0.8, 2, step=0.01, label="Repetition penalty"))
                seed = checked(gr.Number(label="Seed (-1 = random)", precision=0))
                max_tokens = checked(gr.Slider(1, 8192, step=1, label="Max new tokens"))
                thinking = gr.Checkbox(label="Think before answering", value=True, elem_id="thinking-switch",
                                       visible=False, info="This model's template can answer without thinking.")
                settings_note = gr.Markdown(elem_id="settings-note")
            with gr.Accordion("Engine", open=False, visible=False) as engine_box:
                context_limit = checked(gr.Number(label="Context limit in tokens (0 = each model's own)",
                                                  precision=0, minimum=0))
                cache_budget = checked(gr.Number(label="Memory for prompt caches in GB (0 = a quarter of RAM)",
                                                 minimum=0))
                disk_cache = checked(gr.Number(label="Disk for prompt caches in GB, kept across restarts (0 = none)",
                                               minimum=0))
            with gr.Accordion("Add a model", open=False, visible=False) as add_model_box:
                folder = gr.Textbox(label="Model folder on this machine", placeholder="/path/to/mlx-model")
                add_folder = gr.Button("Add folder", size="sm")
                gguf = gr.Textbox(label="GGUF file to import (llama; Q4_K_M, Q6_K, Q4_0, Q8_0, F16 …)",
                                  placeholder="/path/to/model.Q4_0.gguf")
                import_gguf = gr.Button("Import GGUF", size="sm")
                import_status = gr.Markdown()
            account = gr.Markdown(elem_id="account")

    settings = [system_prompt, temperature, top_p, top_k, min_p, repetition_penalty, seed, max_tokens, thinking]
    chat_view = [chatbot, chat_input, conversation_id, title, stats, versions, version, regenerate, continue_button]
    listing = [conversations, more]

    blocks.load(events.page_load, None,
                [model, status, *listing, *settings, context_limit, cache_budget, disk_cache, engine_box, add_model_box,
                 account, settings_note, preset],
                api_name="page_load")
    gr.Timer(1.0).tick(events.status, None, status, show_progress="hidden", api_visibility="private")

    # Replies stream into the chat; the conversation list follows the open conversation.
    # Replies wait for the model inside the app, which takes them in turns (an owner's first, then one user after
    # another) and says how many are ahead; each holds one of the threads set aside for them (see `launch_options`).
    slots = {"concurrency_limit": REPLY_SLOTS, "concurrency_id": "replies", "show_progress": "hidden"}
    sending = chat_input.submit(events.send, [conversation_id, chat_input, model, *settings], chat_view,
                                api_name="send", **slots)
    regenerating = gr.on([regenerate.click, chatbot.retry], events.regenerate, [conversation_id, model, *settings],
                         chat_view, api_name="regenerate", **slots)
    editing = chatbot.edit(events.edit, [conversation_id, model, *settings], chat_view, api_name="edit", **slots)
    continuing = continue_button.click(events.continue_reply, [conversation_id, model, *settings], chat_view,
                                       api_name="continue", **slots)
    replies = [sending, regenerating, editing, continuing]
    for reply in replies:
        reply.then(events.input_ready, None, chat_input, queue=False, api_visibility="private").then(
            events.list, [search, list_limit, conversation_id], listing, api_visibility="private").then(
            events.settings_note, [conversation_id, model], settings_note, api_visibility="private")
    gr.on([chat_input.stop, stop.click], events.stop, [conversation_id], None, queue=False, api_name="stop")
    previous.click(events.previous_version, conversation_id, chat_view, api_name="previous_version")
    following.click(events.next_version, conversation_id, chat_view, api_name="next_version")

    # Opening another chat ends the reply streaming into this one (what was written is saved).
    # A conversation brings back its model and settings; a new chat starts from the defaults.
    shown = [model, status, *settings, settings_note]
    gr.on([new_chat.click, chatbot.clear], events.new, None, chat_view, api_name="new_chat", cancels=replies).then(
        events.show_settings, [conversation_id, model], shown, api_visibility="private")
    conversations.input(events.open, conversations, chat_view, api_name="open_conversation", cancels=replies).then(
        events.show_settings, [conversation_id, model], shown, api_visibility="private")
    conversation_id.change(events.list, [search, list_limit, conversation_id], listing, api_visibility="private")
    search.input(events.search, [search, conversation_id], [*listing, list_limit], trigger_mode="always_last",
                 api_name="search_conversations")
    more.click(events.show_more, [search, list_limit, conversation_id], [*listing, list_limit],
               api_name="more_conversations")
    rename.click(events.rename, [conversation_id, title], None, api_name="rename").then(
        events.list, [search, list_limit, conversation_id], listing, api_visibility="private")
    delete.click(events.delete, conversation_id, chat_view, api_name="delete", cancels=replies).then(
        events.list, [search, list_limit, conversation_id], listing, api_visibility="private").then(
        events.show_settings, [conversation_id, model], shown, api_visibility="private")
    export.click(events.export, conversation_id, export_file, api_name="export")
    export_markdown.click(events.export_markdown, conversation_id, export_file, api_name="export_markdown")
    import_button.upload(events.import_conversation, import_button, chat_view, api_name="import_conversation",
                         cancels=replies).then(
        events.list, [search, list_limit, conversation_id], listing, api_visibility="private").then(
        events.show_settings, [conversation_id, model], shown, api_visibility="private")

    model.input(events.pick_model, [conversation_id, model], [status, *settings, settings_note],
                api_name="select_model")
    add_folder.click(events.add_model_folder, folder, [model, folder], api_name="add_model_folder")
    import_gguf.click(events.import_gguf, gguf, [model, import_status], api_name="import_gguf")
    # Settings are saved when a value is committed, not at every keystroke or slider step.
    committed = [system_prompt.blur, *(s.release for s in settings[1:6]), seed.blur, seed.submit, max_tokens.release,
                 thinking.input]
    gr.on(committed, events.save_settings, [conversation_id, *settings], None, trigger_mode="always_last",
          api_name="save_settings")
    save_preset.click(events.save_preset, [preset_name, system_prompt], [preset, preset_name], api_name="save_preset")
    preset.input(events.use_preset, preset, system_prompt, api_name="use_preset").then(
        events.save_settings, [conversation_id, *settings], None, api_visibility="private")
    rename_preset.click(events.rename_preset, [preset, preset_name], [preset, preset_name], api_name="rename_preset")
    delete_preset.click(events.delete_preset, preset, preset, api_name="delete_preset")
    engine_settings = [context_limit, cache_budget, disk_cache]
    gr.on([*(n.blur for n in engine_settings), *(n.submit for n in engine_settings)],
          events.save_engine_settings, engine_settings, None, trigger_mode="always_last",
          api_name="save_engine_settings")
    return model, status
