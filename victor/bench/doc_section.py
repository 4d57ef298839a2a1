"""The memory-scaling section of docs/performance.md: `victor bench memory-scaling` writes it
between two markers, `victor bench all` (which rewrites the page) keeps it. No imports of the
benches themselves, so both can use it."""
from __future__ import annotations

import os

MARK_BEGIN, MARK_END = "<!-- memory-scaling -->", "<!-- /memory-scaling -->"


def write_section(path: str, text: str) -> None:
    """Put `text` between the memory-scaling markers of `path` (replacing an earlier one, else appended)."""
    old = open(path).read() if os.path.exists(path) else ""
    block = f"{MARK_BEGIN}\n{text.rstrip()}\n{MARK_END}\n"
    if MARK_BEGIN in old and MARK_END in old:
        head, rest = old.split(MARK_BEGIN, 1)
        new = head + block + rest.split(MARK_END, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    with open(path, "w") as f:
        f.write(new)


def existing_section(path: str) -> str:
    """The memory-scaling block of `path` with its markers ('' when none): what `victor bench all` keeps."""
    if not os.path.exists(path):
        return ""
    text = open(path).read()
    if MARK_BEGIN not in text or MARK_END not in text:
        return ""
    return MARK_BEGIN + text.split(MARK_BEGIN, 1)[1].split(MARK_END, 1)[0] + MARK_END + "\n"
