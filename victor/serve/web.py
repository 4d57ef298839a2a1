"""`victor serve --model DIR`: a web chat on a checkpoint (Gradio, the optional extra `victor[web]`).

Upload an image, ask, and the answer streams in; later questions continue the conversation
(a new image starts a new one). Temperature (0: greedy), top-p and the answer length are
sliders. A checkpoint with a stage-1.5 pool gets a "pool view": the image as the encoder sees
it, each patch tinted by the pool row its visual token matches, and the most used rows.

Uploads are files: Gradio stores them and hands over the path, and victor's own loader
(`victor.data.images.load_image`, as training and `victor data check` use) decodes them, so
the pixel limit (`max_image_pixels`, `--max-image-pixels`), EXIF orientation, transparency on
white and the reasoned messages apply here too. A file that is not a usable image is named with
the reason under the upload, and asking about it answers with that message (a Gradio error:
a notice in the page, an exception for API clients); so does an empty question.

Concurrency: `concurrency` (`--concurrency`, default 1) is how many generations run at once on
the one loaded model; more requests wait in Gradio's queue. Each running generation holds its
own KV cache, so memory grows with it; the weights are shared. Every browser tab or API client
keeps its own conversation (the history travels with each request).

API (the same functions the page calls; `gradio_client` or HTTP): `/chat` (image file, message,
history, temperature, top_p, max_new_tokens) -> (history, "") streamed, `/pool` (image file,
matching) -> (overlay, markdown), only with a pool. The server binds to 127.0.0.1 unless told
otherwise (reach it from elsewhere through SSH port forwarding, see docs/inference.md). No web fonts or
analytics are fetched, so the page works offline.
"""
from __future__ import annotations

import os
from pathlib import Path

from victor.data.images import MAX_IMAGE_PIXELS, ImageError, load_image
from victor.serve.chat import ChatModel, text_of

DEFAULTS = {"temperature": 0.2, "top_p": 0.7, "max_new_tokens": 512}  # LLaVA's web demo
EMPTY_QUESTION = "Type a question first."
REASONS = {"corrupt_image": "not a readable image", "truncated_image": "a truncated image",
           "image_too_large": "too many pixels", "missing_image": "no such file"}


class UploadError(ValueError):
    """An uploaded file that victor's image loader refused; the message names the file and why."""


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit("victor serve needs Gradio: pip install 'victor[web]'") from None
    return gr


def load_upload(path, max_pixels: int | None = MAX_IMAGE_PIXELS):
    """An uploaded file -> RGB image through victor's loader (None without a file); refusals
    raise UploadError with the file's own name (not the server's temporary path) and the reason."""
    if not path:
        return None
    try:
        return load_image(path, max_pixels)
    except ImageError as err:
        name, detail = Path(path).name, str(err)
        if detail.startswith(f"{path}: "):
            detail = detail[len(f"{path}: "):]
        if err.reason == "image_too_large" and max_pixels is not None:
            detail += " (victor serve --max-image-pixels)"
        raise UploadError(f"Cannot use {name} ({REASONS.get(err.reason, err.reason)}): {detail}") from None


def build_app(chat: ChatModel, max_image_pixels: int | None = MAX_IMAGE_PIXELS):
    """The Gradio Blocks app around a loaded `ChatModel`."""
    gr = _gradio()

    def image_of(path):
        try:
            return load_upload(path, max_image_pixels)
        except UploadError as err:
            raise gr.Error(str(err), print_exception=False) from None

    def answer(path, message, history, temperature, top_p, max_new_tokens):
        """The API's /chat: an unusable file or an empty question raises gr.Error (the client gets the message)."""
        history = [{"role": m["role"], "content": text_of(m["content"])} for m in (history or [])]
        message = (message or "").strip()
        if not message:
            raise gr.Error(EMPTY_QUESTION, print_exception=False)
        image = image_of(path)
        history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        for partial in chat.stream(image, history[:-2], message, temperature, top_p, max_new_tokens):
            history[-1]["content"] = partial
            yield history, ""
        yield history, ""

    def ask(path, message, history, temperature, top_p, max_new_tokens):
        """The page's Send / Enter: the same, but a refusal is a warning notice that leaves the
        conversation and the question as they were (a Gradio error would cover them)."""
        try:
            yield from answer(path, message, history, temperature, top_p, max_new_tokens)
        except gr.Error as err:
            gr.Warning(err.message)
            yield history, message

    def uploaded(path):
        """A new file (or none) starts a new conversation; show it as loaded, or why it cannot be."""
        if not path:
            return None, "", []
        try:
            image = load_upload(path, max_image_pixels)
        except UploadError as err:
            return None, f"**{err}**", []
        return image, f"{Path(path).name}: {image.width}x{image.height} pixels", []

    def pool_view(path, method):
        try:
            image = load_upload(path, max_image_pixels)
        except UploadError as err:
            return None, f"**{err}**"
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
                upload = gr.File(label="Image file", type="filepath", elem_id="image-file")
                preview = gr.Image(label="Image as the model gets it", type="pil", interactive=False,
                                   height=260, elem_id="preview")
                status = gr.Markdown(elem_id="image-status")
                temperature = gr.Slider(0.0, 1.5, value=DEFAULTS["temperature"], step=0.05,
                                        label="Temperature (0: greedy)", elem_id="temperature")
                top_p = gr.Slider(0.05, 1.0, value=DEFAULTS["top_p"], step=0.05, label="Top p", elem_id="top-p")
                max_new_tokens = gr.Slider(1, 2048, value=DEFAULTS["max_new_tokens"], step=1,
                                           label="Max new tokens", elem_id="max-new-tokens")
                clear = gr.Button("New conversation", elem_id="clear")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="conversation")
                message = gr.Textbox(label="Question", placeholder="Ask about the image, then press Enter",
                                     elem_id="question")
                send = gr.Button("Send", variant="primary", elem_id="send")
                api_chat = gr.Button(visible=False)  # carries the API's /chat, strict about bad input
        inputs = [upload, message, chatbot, temperature, top_p, max_new_tokens]
        # every event that runs the model shares one concurrency group: `concurrency` bounds them all
        # together (Gradio's limit is otherwise per event, so page and API would each get it)
        model = dict(concurrency_id="model")
        send.click(ask, inputs, [chatbot, message], api_name=False, show_progress="minimal", **model)
        message.submit(ask, inputs, [chatbot, message], api_name=False, show_progress="minimal", **model)
        api_chat.click(answer, inputs, [chatbot, message], api_name="chat", **model)
        clear.click(lambda: ([], ""), None, [chatbot, message], api_name=False)
        upload.change(uploaded, upload, [preview, status, chatbot], api_name=False)
        if chat.pool is not None:
            with gr.Accordion("Pool view: which patches match which pool rows", open=False, elem_id="pool-view"):
                method = gr.Radio(["nearest", "hungarian"], value="nearest",
                                  label="matching (nearest row, or one-to-one as stage 1.5)")
                show = gr.Button("Show pool matches", elem_id="show-pool")
                overlay = gr.Image(label="patches tinted by their pool row", interactive=False, elem_id="overlay")
                table = gr.Markdown(elem_id="pool-table")
            show.click(pool_view, [upload, method], [overlay, table], api_name="pool", **model)
            upload.change(lambda: (None, ""), None, [overlay, table], api_name=False)  # not another image's
    return app


def serve(model: str, host: str = "127.0.0.1", port: int | None = None, dtype=None, block: bool = True,
          concurrency: int = 1, max_image_pixels: int | None = MAX_IMAGE_PIXELS):
    """Load `model` and serve the chat; returns (app, url) when `block` is False.

    `concurrency`: generations run at once (the queue's concurrency limit); `max_image_pixels`:
    larger uploads are refused before they are decoded (None: no limit)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    gr = _gradio()
    app = build_app(ChatModel(model, dtype=dtype), max_image_pixels=max_image_pixels)
    app.queue(default_concurrency_limit=concurrency)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # system fonts: nothing fetched
                              font_mono=["ui-monospace", "monospace"])
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, ssr_mode=False, quiet=not block,
                           prevent_thread_lock=not block, footer_links=["api"], theme=theme)
    return app, url
