"""`victor serve`: the chat logic, then the Gradio app through its HTTP API on 127.0.0.1.

Greedy answers streamed by the web chat equal `victor chat`'s (`Generator`); a second question
continues the conversation; a checkpoint with a pool answers `/pool`. Skipped without Gradio.
"""
import socket

import pytest
import torch
from PIL import Image

from victor.infer import Generator
from victor.serve.chat import ChatModel, conversation
from victor.model.comprehension_state import save_state as save_extra_state

QUESTION = "what colour is the circle ?"


@pytest.fixture(scope="module")
def checkpoint(tiny_llava, tmp_path_factory):
    """The tiny checkpoint with a 64-row pool beside it, as a stage-1.5 output has."""
    model, processor = tiny_llava
    path = tmp_path_factory.mktemp("serve") / "ckpt"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    hidden = model.config.text_config.hidden_size
    save_extra_state({"pool": torch.randn(64, hidden, generator=torch.Generator().manual_seed(0)),
                      "pool_ready": torch.tensor(True), "usage": torch.zeros(64, dtype=torch.long)}, path)
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (40, 24), (250, 0, 0)).save(path)
    return path


def test_conversation_puts_the_image_in_the_first_turn():
    history = [{"role": "user", "content": "first ?"}, {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
    messages = conversation(history, "second ?", with_image=True)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0] == {"type": "image"} and messages[2]["content"] == [
        {"type": "text", "text": "second ?"}]
    assert messages[1]["content"] == [{"type": "text", "text": "a"}]


def test_stream_matches_victor_chat_and_pool_view(checkpoint, image_file):
    chat = ChatModel(checkpoint)
    image = Image.open(image_file).convert("RGB")
    pieces = list(chat.stream(image, [], QUESTION, temperature=0, max_new_tokens=6))
    expected = Generator(str(checkpoint))([image], [QUESTION], max_new_tokens=6)[0]
    assert pieces[-1].strip() == expected and all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))
    overlay, found = chat.pool_matches(image)
    assert len(found["rows"]) == 4 and all(len(r) == 4 for r in found["rows"])  # 32 px / 8 px patches
    assert all(0 <= row < 64 for line in found["rows"] for row in line) and overlay.size[0] >= 336
    one_to_one = chat.pool_matches(image, "hungarian")[1]
    assert one_to_one["distinct"] == 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_chat_through_its_http_api(checkpoint, image_file):
    pytest.importorskip("gradio")
    client_module = pytest.importorskip("gradio_client")
    from victor.serve.web import serve

    app, url = serve(str(checkpoint), host="127.0.0.1", port=free_port(), block=False)
    try:
        assert url.startswith("http://127.0.0.1:")
        client = client_module.Client(url, verbose=False)
        image = client_module.handle_file(str(image_file))
        job = client.submit(image, QUESTION, [], 0.0, 0.7, 6, api_name="/chat")
        history, box = job.result(timeout=300)
        expected = Generator(str(checkpoint))([Image.open(image_file).convert("RGB")], [QUESTION],
                                              max_new_tokens=6)[0]
        assert box == "" and [m["role"] for m in history] == ["user", "assistant"]
        assert _text(history[1]).strip() == expected
        assert len(job.outputs()) >= 2  # streamed: partial answers before the last one

        history2, _ = client.predict(image, "how many objects ?", history, 0.0, 0.7, 6, api_name="/chat")
        assert [m["role"] for m in history2] == ["user", "assistant", "user", "assistant"]
        assert _text(history2[1]) == _text(history[1])

        overlay, table = client.predict(image, "nearest", api_name="/pool")
        assert "distinct pool rows" in table and overlay
    finally:
        app.close()


def _text(message) -> str:
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)
