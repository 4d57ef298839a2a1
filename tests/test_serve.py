"""`victor serve`: the chat logic, without Gradio (the page and its API: tests/web, in .venv-web).

Greedy answers streamed by the chat equal `victor chat`'s (`Generator`); the pool view matches
patches to rows; uploads go through victor's image loader.
"""
import pytest
from PIL import Image

from victor.infer import Generator
from victor.serve.chat import ChatModel, conversation

QUESTION = "what colour is the circle ?"


@pytest.fixture(scope="module")
def checkpoint(pool_checkpoint):
    return pool_checkpoint


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


def test_uploads_go_through_victors_loader(tmp_path, image_file):
    """The web chat decodes uploads with victor's loader: its pixel limit and reasons, the file's own name."""
    from victor.serve.web import UploadError, load_upload

    assert load_upload(None) is None
    assert load_upload(str(image_file)).size == (40, 24)
    rgba = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(rgba)
    assert load_upload(str(rgba)).getpixel((0, 0)) == (255, 255, 255)  # transparency on white, as training
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(UploadError, match=r"^Cannot use notes.txt \(not a readable image\): not an image format"):
        load_upload(str(notes))
    with pytest.raises(UploadError, match=r"^Cannot use red.png \(too many pixels\): 40x24 = 960 pixels, more "
                                          r"than the limit of 959 \(victor serve --max-image-pixels\)$"):
        load_upload(str(image_file), max_pixels=959)
    assert load_upload(str(image_file), max_pixels=None).size == (40, 24)
