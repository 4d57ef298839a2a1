"""The web chat through its HTTP API (gradio_client), and where it listens.

Greedy answers streamed by `/chat` equal `victor chat`'s (Generator); a second question continues
the conversation; `/pool` answers on a checkpoint with a pool; bad uploads and an empty question
come back as errors that name the problem, and the server goes on serving; with no host given the
server listens on 127.0.0.1 only.
"""
import socket

import pytest
from chat_page import FOLLOW_UP, QUESTION, TOKENS, free_port, need


def _text(message) -> str:
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


@pytest.fixture(scope="module")
def client(server):
    client_module = need("gradio_client")
    return client_module.Client(server, verbose=False)


def test_web_chat_through_its_http_api(client, images, greedy):
    from gradio_client import handle_file

    image = handle_file(str(images["red"]))
    job = client.submit(image, QUESTION, [], 0.0, 0.7, TOKENS, api_name="/chat")
    history, box = job.result(timeout=300)
    assert box == "" and [m["role"] for m in history] == ["user", "assistant"]
    assert _text(history[1]).strip() == greedy(images["red"], QUESTION)
    assert len(job.outputs()) >= 2  # streamed: partial answers before the last one

    history2, _ = client.predict(image, FOLLOW_UP, history, 0.0, 0.7, TOKENS, api_name="/chat")
    assert [m["role"] for m in history2] == ["user", "assistant", "user", "assistant"]
    assert _text(history2[1]) == _text(history[1]) and _text(history2[2]) == FOLLOW_UP

    overlay, table = client.predict(image, "nearest", api_name="/pool")
    assert "distinct pool rows" in table and overlay


@pytest.mark.parametrize("bad, says", [
    ("text", "Cannot use notes.txt (not a readable image): not an image format PIL can read"),
    ("corrupt", "Cannot use corrupt.png (not a readable image)"),
    ("huge", "Cannot use huge.png (too many pixels): 8000x6000 = 48000000 pixels, more than the limit of 40000000"),
    (None, "Type a question first."),
])
def test_bad_input_through_the_api_is_named_and_the_server_goes_on(client, images, greedy, bad, says):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    good = handle_file(str(images["green"]))
    upload, question = (good, "  ") if bad is None else (handle_file(str(images[bad])), QUESTION)
    with pytest.raises(AppError) as refused:
        client.predict(upload, question, [], 0.0, 0.7, TOKENS, api_name="/chat")
    assert says in str(refused.value) and "/tmp" not in str(refused.value)  # the file's name, not the server's path
    if bad is not None:
        _, table = client.predict(upload, "nearest", api_name="/pool")
        assert says in table
    history, _ = client.predict(good, QUESTION, [], 0.0, 0.7, TOKENS, api_name="/chat")
    assert _text(history[-1]).strip() == greedy(images["green"], QUESTION)


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port` (Linux's /proc/net/tcp and tcp6)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = open(table).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # stored per 32-bit word
                found.add(socket.inet_ntop(family, words))
    return found


def test_serve_binds_to_loopback_when_no_host_is_given(web_checkpoint, monkeypatch):
    need("gradio")
    from victor.cli import build_parser
    from victor.serve.web import serve

    assert build_parser().parse_args(["serve", "--model", "m"]).host == "127.0.0.1"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # the explicit default wins over Gradio's variable
    port = free_port()
    app, url = serve(str(web_checkpoint), port=port, block=False)
    try:
        assert url.startswith(f"http://127.0.0.1:{port}")
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        app.close()


def test_serve_options():
    need("gradio")
    from victor.cli import build_parser
    from victor.serve.web import serve

    args = build_parser().parse_args(["serve", "--model", "m", "--concurrency", "3", "--max-image-pixels", "0"])
    assert (args.concurrency, args.max_image_pixels) == (3, 0)
    assert build_parser().parse_args(["serve", "--model", "m"]).concurrency == 1
    with pytest.raises(ValueError, match="concurrency"):
        serve("unused", concurrency=0, block=False)
