"""`victor serve --model DIR`: a web chat on a checkpoint (Gradio, the optional extra `victor[web]`).

Upload an image, ask, and the answer streams in; later questions continue the conversation
(a new image starts a new one). Temperature (0: greedy), top-p and the answer length are
sliders. A checkpoint with a stage-1.5 pool gets a "pool view": the image as the encoder sees
it, each patch tinted by the pool row its visual token matches, and the most used rows.

API (the same functions the page calls; `gradio_client` or HTTP): `/chat` (image, message,
history, temperature, top_p, max_new_tokens) -> (history, "") streamed, `/pool` (image,
matching) -> (overlay, markdown), only with a pool. The server binds to 127.0.0.1 unless told
otherwise. No web fonts or analytics are fetched, so the page works offline.
"""
from __future__ import annotations

import os

from victor.serve.chat import ChatModel, text_of

DEFAULTS = {"temperature": 0.2, "top_p": 0.7, "max_new_tokens": 512}  # LLaVA's web demo


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit("victor serve needs Gradio: pip install 'victor[web]'") from None
    return gr


def build_app(chat: ChatModel):
    """The Gradio Blocks app around a loaded `ChatModel`."""
    gr = _gradio()

    def respond(image, message, history, temperature, top_p, max_new_tokens):
        history = [{"role": m["role"], "content": text_of(m["content"])} for m in (history or [])]
        message = (message or "").strip()
        if not message:
            yield history, ""
            return
        history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        for partial in chat.stream(image, history[:-2], message, temperature, top_p, max_new_tokens):
            history[-1]["content"] = partial
            yield history, ""
        yield history, ""

    def pool_view(image, method):
        if image is None:
            return None, "Upload an image first."
        overlay, found = chat.pool_matches(image, method)
        top = ", ".join(f"row {row} ({n} patches)" for row, n in found["top"])
        grid = "\n".join(" ".join(f"{row:4d}" for row in line) for line in found["rows"])
        return overlay, (f"**{found['distinct']} distinct pool rows** for {sum(map(len, found['rows']))} patches "
                         f"({method}). Most used: {top}.\n\nPool row per patch:\n```\n{grid}\n```")

    with gr.Blocks(title="victor chat") as app:
        gr.Markdown(f"### victor chat\n{chat.description}")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="Image")
                temperature = gr.Slider(0.0, 1.5, value=DEFAULTS["temperature"], step=0.05,
                                        label="Temperature (0: greedy)")
                top_p = gr.Slider(0.05, 1.0, value=DEFAULTS["top_p"], step=0.05, label="Top p")
                max_new_tokens = gr.Slider(1, 2048, value=DEFAULTS["max_new_tokens"], step=1, label="Max new tokens")
                clear = gr.Button("New conversation")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", height=460)
                message = gr.Textbox(label="Question", placeholder="Ask about the image, then press Enter",
                                     elem_id="question")
                send = gr.Button("Send", variant="primary", elem_id="send")
        inputs = [image, message, chatbot, temperature, top_p, max_new_tokens]
        send.click(respond, inputs, [chatbot, message], api_name="chat")
        message.submit(respond, inputs, [chatbot, message], api_name=False)
        clear.click(lambda: ([], ""), None, [chatbot, message], api_name=False)
        image.upload(lambda: [], None, chatbot, api_name=False)  # a new image starts a new conversation
        if chat.pool is not None:
            with gr.Accordion("Pool view: which patches match which pool rows", open=False):
                method = gr.Radio(["nearest", "hungarian"], value="nearest",
                                  label="matching (nearest row, or one-to-one as stage 1.5)")
                show = gr.Button("Show pool matches")
                overlay = gr.Image(label="patches tinted by their pool row", interactive=False)
                table = gr.Markdown()
            show.click(pool_view, [image, method], [overlay, table], api_name="pool")
    return app


def serve(model: str, host: str = "127.0.0.1", port: int | None = None, dtype=None, block: bool = True):
    """Load `model` and serve the chat; returns (app, url) when `block` is False."""
    gr = _gradio()
    app = build_app(ChatModel(model, dtype=dtype))
    app.queue(default_concurrency_limit=1)  # one generation at a time on the one model
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # system fonts: nothing fetched
                              font_mono=["ui-monospace", "monospace"])
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, ssr_mode=False, quiet=not block,
                           prevent_thread_lock=not block, footer_links=["api"], theme=theme)
    return app, url
