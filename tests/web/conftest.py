"""The web chat's tests: they run in their own environment (`make web-env`: .venv-web, with
Gradio and the pillow it allows; `make test` runs them there) and drive a real browser (Debian's
chromium + chromium-driver through Selenium; nothing downloads a browser or a driver).

Without Gradio, Selenium or chromium they skip, saying how to get them; under CI (CI=true) a skip
here is a failure, so CI cannot pass without having run them.
"""
import os
import shutil
import tempfile

import pytest
from chat_page import CHROMEDRIVER, CHROMIUM, COLOURS, IN_CI, INSTALL, TOKENS, free_port, need, png_header_only
from PIL import Image



def pytest_configure(config):
    # Gradio's queue calls pandas options that pandas 3 deprecates, once per request: not ours to fix
    config.addinivalue_line("filterwarnings", r"ignore:.*(no_silent_downcasting|The copy keyword is deprecated)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped web test fails: CI must not pass without the browser having run."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and "tests/web/" in str(item.fspath).replace(os.sep, "/"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under CI=true, which must run every web test: {reason}"


@pytest.fixture(scope="session")
def web_checkpoint(pool_checkpoint):
    return pool_checkpoint


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Good images (one per colour) and the bad uploads: a text file, a corrupt PNG, one over the pixel limit."""
    folder = tmp_path_factory.mktemp("uploads")
    paths = {}
    for name, colour in COLOURS.items():
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", (40, 24), colour).save(paths[name])
    paths["text"] = folder / "notes.txt"
    paths["text"].write_text("these are notes, not an image\n")
    good = paths["red"].read_bytes()
    data = good.index(b"IDAT") + 8
    paths["corrupt"] = folder / "corrupt.png"
    paths["corrupt"].write_bytes(good[:data] + b"\x13" * 20 + good[data + 20:])  # valid header, garbled pixels
    paths["huge"] = folder / "huge.png"
    paths["huge"].write_bytes(png_header_only(8000, 6000))  # 48 Mpx > the 40 Mpx default limit
    return paths


@pytest.fixture(scope="session")
def greedy(web_checkpoint):
    """`victor chat`'s answer (Generator, greedy) for (image path, question), cached."""
    from victor.infer import Generator

    generator, cache = Generator(str(web_checkpoint)), {}

    def answer(image, question):
        key = (str(image), question)
        if key not in cache:
            cache[key] = generator([image], [question], max_new_tokens=TOKENS)[0]
        return cache[key]
    return answer


@pytest.fixture(scope="session")
def server(web_checkpoint):
    """One web chat for the session's tests: concurrency 2, the default host (127.0.0.1)."""
    need("gradio")
    from victor.serve.web import serve

    app, url = serve(str(web_checkpoint), port=free_port(), block=False, concurrency=2)
    yield url
    app.close()


@pytest.fixture(scope="session")
def browser_factory():
    """Start headless chromium through /usr/bin/chromedriver; every browser is closed at the end."""
    webdriver = need("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.skip(f"no {' or '.join(missing)}: {INSTALL}")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never look for a driver online
    started = []

    def start():
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        profile = tempfile.mkdtemp(prefix="victor-chromium-")
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-extensions",
                     f"--user-data-dir={profile}", "--window-size=1280,1600"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        started.append((driver, profile))
        return driver

    yield start
    for driver, profile in started:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
