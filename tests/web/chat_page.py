"""What the web tests share: the sessions' images and questions, and `ChatPage`, the chat page as a
person uses it (through Selenium: upload a file, set sliders, type, press Send, read the page)."""
import os
import socket
import struct
import time
import zlib

import pytest

# Debian's paths; VICTOR_CHROMIUM / VICTOR_CHROMEDRIVER name others (a distribution that installs them elsewhere)
CHROMIUM = os.environ.get("VICTOR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("VICTOR_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL = ("the web tests need Gradio and Selenium (`make web-env` builds .venv-web with them; `make test` "
           "runs these tests there) and Debian's chromium + chromium-driver (as root: apt-get update && "
           "apt-get install -y chromium chromium-driver)")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Each session's own image and question (the tiny model answers each pair differently).
COLOURS = {"red": (250, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 250), "yellow": (240, 240, 0)}
QUESTION = "what colour is the circle ?"
FOLLOW_UP = "how many objects ?"
TOKENS = 8  # max_new_tokens in every test: short answers, all greedy
WAIT = 60  # seconds for anything the page should show


def need(module: str):
    return pytest.importorskip(module, reason=f"no {module}: {INSTALL}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a one-row body: refused on its size,
    before any decoding, without writing a real 48-megapixel file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 3 * 16))) + chunk(b"IEND", b""))


class ChatPage:
    """The victor chat page in one browser (its own Gradio session)."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.common.by import By

        self.driver, self.by = driver, By
        driver.get(url)
        self.wait_for(lambda: self.find_all("#send"), "the page to load")

    def find_all(self, css: str):
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def find(self, css: str):
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def wait_for(self, condition, what: str, timeout: float = WAIT):
        """Poll `condition` until it returns something truthy; fail naming `what` and the page's text."""
        end = time.monotonic() + timeout
        while True:
            try:
                value = condition()
            except Exception:  # an element replaced while read (the page re-renders as answers stream)
                value = None
            if value:
                return value
            if time.monotonic() > end:
                pytest.fail(f"waited {timeout}s for {what}; the page shows:\n{self.text()}")
            time.sleep(0.1)

    def text(self) -> str:
        return self.find("body").text

    def upload(self, path) -> str:
        """Choose a file (replacing any chosen before); returns the status line under the preview."""
        if not self.find_all("#image-file input[type=file]"):
            self.find("#image-file button[aria-label='Clear']").click()
            self.wait_for(lambda: self.find_all("#image-file input[type=file]"), "the file to be cleared")
            self.wait_for(lambda: not self.find("#image-status").text.strip(), "the status to clear")
        self.find("#image-file input[type=file]").send_keys(str(path))
        return self.wait_for(lambda: self.find("#image-status").text.strip(), f"the status of {path}")

    def set_slider(self, elem_id: str, value) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.find(f"#{elem_id} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.TAB)
        self.wait_for(lambda: float(self.find(f"#{elem_id} input[type=range]").get_attribute("value")) == float(value),
                      f"slider {elem_id} at {value}")

    def greedy(self, tokens: int = TOKENS) -> None:
        self.set_slider("temperature", 0)
        self.set_slider("max-new-tokens", tokens)

    def messages(self) -> list[tuple[str, str]]:
        """The conversation as shown: (role, text) per bubble, in order."""
        found = []
        for bubble in self.find_all("#conversation [data-testid='user'], #conversation [data-testid='bot']"):
            found.append(("user" if bubble.get_attribute("data-testid") == "user" else "assistant",
                          bubble.text.strip()))
        return found

    def idle(self) -> bool:
        """No event running: the chat's progress indicator is gone."""
        trackers = self.find_all("#conversation [data-testid='status-tracker'], "
                                 "#question [data-testid='status-tracker']")
        return all("hide" in (t.get_attribute("class") or "").split() for t in trackers)

    def ask(self, question: str) -> None:
        box = self.find("#question textarea")
        box.clear()
        box.send_keys(question)
        self.find("#send").click()

    def ask_and_read(self, question: str) -> list[tuple[str, str]]:
        """Ask; wait until the answer has come in full; the conversation then shown."""
        before = len(self.messages())
        self.ask(question)
        self.wait_for(lambda: len(self.messages()) >= before + 2, f"an answer to {question!r}")
        last, steady, self.seen = None, 0, []

        def settled():  # the streamed answer stops changing and the event has ended
            nonlocal last, steady
            now = self.messages()
            if now and now[-1][0] == "assistant" and (not self.seen or self.seen[-1] != now[-1][1]):
                self.seen.append(now[-1][1])  # the answer as it grows on the page
            steady = steady + 1 if now == last and self.idle() and now[-1][1] else 0
            last = now
            return steady >= 5
        self.wait_for(settled, f"the answer to {question!r} to finish")
        return last

    def notice(self, says: str) -> str:
        """Wait for a notice (Gradio toast) containing `says`; its text."""
        return self.wait_for(lambda: next((t.text for t in self.find_all("[data-testid='toast-body']")
                                           if says in t.text), None), f"a notice saying {says!r}")

    def close_notices(self) -> None:
        for button in self.find_all("[data-testid='toast-close']"):
            try:
                button.click()
            except Exception:
                pass
