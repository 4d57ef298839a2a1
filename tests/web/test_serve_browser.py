"""The web chat in a real browser (headless Debian chromium driven by Selenium), as a person uses it.

- the chat: upload an image, temperature 0, ask, read the streamed answer off the page: it equals
  `victor chat`'s greedy answer; a follow-up continues the conversation; the pool overlay appears;
- bad input: a text file, a corrupt PNG, an image over the pixel limit, an empty question: each
  shows a message naming the problem, and a good question after it is answered;
- load: with the queue's concurrency at 2, two browsers and two API clients at once, each with its
  own image and question, each get exactly `victor chat`'s answer, and no history crosses sessions.
"""
import threading
import time

import pytest
from chat_page import COLOURS, FOLLOW_UP, QUESTION, TOKENS, ChatPage, need
from PIL import Image

from victor.serve.chat import ChatModel


@pytest.fixture(scope="module")
def page(server, browser_factory):
    return ChatPage(browser_factory(), server)


@pytest.fixture
def generations(monkeypatch):
    """Count the generations running at once ("most") in the server (it runs in this process), and
    pause 0.15 s after each streamed piece so that streaming shows on the page and sessions overlap
    on a model this small. The answers themselves are untouched."""
    state, lock = {"running": 0, "most": 0}, threading.Lock()
    stream = ChatModel.stream

    def paced(self, *args, **kwargs):
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
        try:
            for partial in stream(self, *args, **kwargs):
                time.sleep(0.15)
                yield partial
        finally:
            with lock:
                state["running"] -= 1
    monkeypatch.setattr(ChatModel, "stream", paced)
    return state


def test_chat_in_the_browser_matches_victor_chat(page, images, greedy, web_checkpoint, generations):
    assert page.upload(images["red"]) == "red.png: 40x24 pixels"
    page.greedy()
    shown = page.ask_and_read(QUESTION)
    assert shown == [("user", QUESTION), ("assistant", greedy(images["red"], QUESTION))]
    assert len(page.seen) >= 3 and page.seen[-1] == shown[-1][1]  # streamed: the answer grew on the page
    assert all(now.startswith(before.strip()) for before, now in zip(page.seen, page.seen[1:])), page.seen

    shown = page.ask_and_read(FOLLOW_UP)
    chat = ChatModel(web_checkpoint)  # the follow-up's greedy answer, given the first exchange
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": shown[1][1]}]
    image = Image.open(images["red"]).convert("RGB")
    follow_up = list(chat.stream(image, history, FOLLOW_UP, temperature=0, max_new_tokens=TOKENS))[-1].strip()
    assert shown == [("user", QUESTION), ("assistant", greedy(images["red"], QUESTION)),
                     ("user", FOLLOW_UP), ("assistant", follow_up)]

    page.find("#pool-view button, #pool-view .label-wrap").click()
    page.wait_for(lambda: page.find("#show-pool").is_displayed(), "the pool view to open")
    page.find("#show-pool").click()
    table = page.wait_for(lambda: "distinct pool rows" in page.find("#pool-table").text and page.find("#pool-table").text,
                          "the pool table")
    assert "16 patches (nearest)" in table
    overlay = page.wait_for(lambda: page.find_all("#overlay img"), "the pool overlay image")[0]
    page.wait_for(lambda: overlay.get_attribute("naturalWidth") not in (None, "0"), "the overlay to load")
    assert int(overlay.get_attribute("naturalWidth")) >= 336

    page.upload(images["green"])  # a new image starts a new conversation
    page.wait_for(lambda: not page.messages(), "the conversation to clear")


BAD = [("text", "Cannot use notes.txt (not a readable image): not an image format PIL can read"),
       ("corrupt", "Cannot use corrupt.png (not a readable image)"),
       ("huge", "Cannot use huge.png (too many pixels): 8000x6000 = 48000000 pixels, more than the limit of 40000000")]


def test_bad_input_in_the_browser_is_named_and_the_server_goes_on(page, images, greedy):
    page.greedy()
    for bad, says in BAD:
        status = page.upload(images[bad])
        assert says in status and "/tmp" not in status  # named under the upload, the moment it is chosen
        page.close_notices()
        page.ask(QUESTION)  # asking about it anyway: the same message, as a notice
        assert says in page.notice(says)
        assert page.find("#question textarea").get_attribute("value") == QUESTION  # the question is kept
        page.close_notices()
        assert page.upload(images["blue"]) == "blue.png: 40x24 pixels"
        assert page.ask_and_read(QUESTION) == [("user", QUESTION), ("assistant", greedy(images["blue"], QUESTION))]

    page.ask("   ")
    page.notice("Type a question first.")
    page.close_notices()
    shown = page.ask_and_read(FOLLOW_UP)  # the conversation was kept and goes on
    assert [role for role, _ in shown] == ["user", "assistant", "user", "assistant"]


def test_four_sessions_at_once_each_get_their_own_answer(server, browser_factory, images, greedy, generations):
    client_module = need("gradio_client")
    names = list(COLOURS)
    questions = dict(zip(names, [QUESTION, FOLLOW_UP, "describe the image in detail", "is there a red square ?"]))
    expected = {name: greedy(images[name], questions[name]) for name in names}
    assert len(set(expected.values())) == 4, "the four sessions must expect different answers"

    pages = {name: ChatPage(browser_factory(), server) for name in names[:2]}
    for name, page in pages.items():
        page.upload(images[name])
        page.greedy()
    clients = {name: client_module.Client(server, verbose=False) for name in names[2:]}
    results, start = {}, threading.Barrier(4)

    def in_browser(name):
        start.wait()
        results[name] = pages[name].ask_and_read(questions[name])

    def through_api(name):
        start.wait()
        history, _ = clients[name].predict(client_module.handle_file(str(images[name])), questions[name], [],
                                           0.0, 0.7, TOKENS, api_name="/chat")
        results[name] = [(m["role"], m["content"] if isinstance(m["content"], str) else
                          "".join(p.get("text", "") for p in m["content"])) for m in history]

    threads = [threading.Thread(target=in_browser if name in pages else through_api, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(thread.is_alive() for thread in threads)
    for name in names:
        assert [(role, text.strip()) for role, text in results[name]] == [
            ("user", questions[name]), ("assistant", expected[name])], name
    assert generations["most"] == 2  # the queue ran generations side by side, at most its concurrency
