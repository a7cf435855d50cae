"""The Chat tab: conversations, the model picker, the chat itself and its settings. Wiring only."""

from __future__ import annotations

import gradio as gr

from ..controller import Controller

PLACEHOLDER = "Ask anything, or attach images (drop, paste or the clip). Enter sends, Shift+Enter adds a line."


def build_chat_tab(controller: Controller, blocks: gr.Blocks) -> None:
    """Lay out the Chat tab inside the current Blocks context and wire it to the controller."""
    conversation_id = gr.State("")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=220, elem_id="sidebar"):
            new_chat = gr.Button("+ New chat", variant="primary", size="sm")
            conversations = gr.Radio(label="Conversations", choices=[], elem_id="conversations")
            with gr.Accordion("This conversation", open=False):
                title = gr.Textbox(label="Title", max_lines=1)
                rename = gr.Button("Rename", size="sm")
                export = gr.Button("Export JSON", size="sm")
                export_file = gr.File(label="Export", visible=False, interactive=False)
                delete = gr.Button("Delete", variant="stop", size="sm")

        with gr.Column(scale=4, min_width=420):
            with gr.Row(equal_height=True):
                model = gr.Dropdown(label="Model", choices=[], scale=3, elem_id="model-picker", allow_custom_value=True)
                status = gr.Markdown(elem_id="model-status")
            chatbot = gr.Chatbot(
                label="Chat", height="62vh", editable="user", buttons=["copy", "copy_all"],
                placeholder="Pick a model and say hello.", elem_id="chatbot",
                latex_delimiters=[{"left": "$$", "right": "$$", "display": True}],
            )
            chat_input = gr.MultimodalTextbox(
                placeholder=PLACEHOLDER, show_label=False, file_types=["image"], file_count="multiple",
                sources=["upload"], elem_id="chat-input", autofocus=True,
            )
            with gr.Row():
                regenerate = gr.Button("↻ Regenerate", size="sm")
                stop = gr.Button("■ Stop", size="sm")

        with gr.Column(scale=1, min_width=240):
            with gr.Accordion("Settings", open=True):
                system_prompt = gr.Textbox(label="System prompt", lines=3, placeholder="(the model's default)")
                temperature = gr.Slider(0, 2, step=0.05, label="Temperature")
                top_p = gr.Slider(0, 1, step=0.01, label="Top p")
                top_k = gr.Slider(0, 200, step=1, label="Top k (0 = off)")
                min_p = gr.Slider(0, 1, step=0.01, label="Min p")
                repetition_penalty = gr.Slider(0.8, 2, step=0.01, label="Repetition penalty")
                seed = gr.Number(label="Seed (-1 = random)", precision=0)
                max_tokens = gr.Slider(1, 8192, step=1, label="Max new tokens")
            with gr.Accordion("Add a model", open=False):
                folder = gr.Textbox(label="Model folder on this machine", placeholder="/path/to/mlx-model")
                add_folder = gr.Button("Add folder", size="sm")
                gguf = gr.Textbox(label="GGUF file to import (llama; Q4_0, Q4_1, Q8_0, F16, F32)",
                                  placeholder="/path/to/model.Q4_0.gguf")
                import_gguf = gr.Button("Import GGUF", size="sm")
                import_status = gr.Markdown()

    settings = [system_prompt, temperature, top_p, top_k, min_p, repetition_penalty, seed, max_tokens]
    stream_outputs = [chatbot, chat_input, conversations, conversation_id]

    blocks.load(controller.page_load, None, [model, status, conversations, *settings], api_name="page_load")
    gr.Timer(1.0).tick(controller.model_status, None, status, show_progress="hidden", api_visibility="private")

    sending = chat_input.submit(controller.send, [conversation_id, chat_input, model, *settings], stream_outputs,
                                api_name="send", concurrency_limit=None, show_progress="hidden")
    regenerating = gr.on([regenerate.click, chatbot.retry], controller.regenerate, [conversation_id, model, *settings],
                         stream_outputs, api_name="regenerate", concurrency_limit=None, show_progress="hidden")
    editing = chatbot.edit(controller.edit, [conversation_id, model, *settings], stream_outputs,
                           api_name="edit", concurrency_limit=None, show_progress="hidden")
    replies = [sending, regenerating, editing]
    for reply in replies:
        reply.then(controller.input_ready, None, chat_input, queue=False, api_visibility="private")
    gr.on([chat_input.stop, stop.click], controller.stop, [conversation_id], None, queue=False, api_name="stop")

    # Opening another chat ends the reply streaming into this one (what was written is saved).
    gr.on([new_chat.click, chatbot.clear], controller.new_chat, None, [chatbot, conversation_id, title, conversations],
          api_name="new_chat", cancels=replies)
    conversations.input(controller.open_conversation, conversations, [chatbot, conversation_id, title],
                        api_name="open_conversation", cancels=replies)
    rename.click(controller.rename_conversation, [conversation_id, title], conversations, api_name="rename")
    delete.click(controller.delete_conversation, conversation_id, [chatbot, conversation_id, title, conversations],
                 api_name="delete", cancels=replies)
    export.click(controller.export_conversation, conversation_id, export_file, api_name="export")

    model.input(controller.select_model, model, status, api_name="select_model")
    add_folder.click(controller.add_model_folder, folder, [model, folder], api_name="add_model_folder")
    import_gguf.click(controller.import_gguf, gguf, [model, import_status], api_name="import_gguf")
    gr.on([c.input for c in settings], controller.save_settings, settings, None,
          trigger_mode="always_last", api_name="save_settings")
