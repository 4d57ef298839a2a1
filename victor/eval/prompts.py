"""LLaVA-1.5 evaluation prompts and MMBench conventions, shared by the readers and the tiny world.

Prompts never contain the ``<image>`` token: the caller's chat template places the image.
The conventions follow LLaVA-1.5 ``scripts/v1_5/eval/*.sh`` and ``llava/eval/model_vqa*.py``:

* multiple choice (MMBench, SEED, ScienceQA, MMStar): ``[hint\\n]question`` then one line per
  option ``"A. text"``, then ``"\\n" + MC_SUFFIX`` (``--single-pred-prompt``; MMBench-CN:
  ``MC_SUFFIX_CN``, LLaVA's ``--lang cn``);
* short answers (POPE, GQA, VQAv2): ``question + "\\n" + SHORT_ANSWER_SUFFIX``;
* MM-Vet, LLaVA-Bench in-the-wild, RealWorldQA: the question text as released.

MMBench CircularEval (VLMEvalKit) stores the k-th option-rotated copy of question ``i`` as
row ``i + k * CIRCULAR_OFFSET``; :func:`circular_copy` makes such a copy.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

__all__ = [
    "CIRCULAR_OFFSET",
    "MC_SUFFIX",
    "MC_SUFFIX_CN",
    "MMBENCH_COLUMNS",
    "MMBENCH_OPTIONS",
    "OPTION_LETTERS",
    "SHORT_ANSWER_SUFFIX",
    "circular_copy",
    "consecutive_options",
    "format_mc_prompt",
    "options_from_lines",
    "options_from_parens",
    "with_suffix",
]

MC_SUFFIX = "Answer with the option's letter from the given choices directly."
MC_SUFFIX_CN = "请直接回答选项字母。"  # LLaVA ``model_vqa_mmbench.py --lang cn`` (MMBench-CN)
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
OPTION_LETTERS = "ABCDEFGHIJ"

MMBENCH_OPTIONS = "ABCD"
MMBENCH_COLUMNS = [
    "index", "question", "hint", *MMBENCH_OPTIONS, "answer",
    "category", "l2-category", "image", "split",
]
CIRCULAR_OFFSET = 1_000_000


def format_mc_prompt(question: str, options: Mapping[str, str] | Sequence[str], hint: str | None = None,
                     suffix: str = MC_SUFFIX) -> str:
    """LLaVA-1.5 multiple-choice prompt (``model_vqa_mmbench.py`` with ``--single-pred-prompt``).

    ``options`` maps letters to texts, or lists the texts in the order of ``OPTION_LETTERS``;
    ``suffix`` is the closing instruction (``MC_SUFFIX_CN`` for MMBench-CN).
    """
    if not isinstance(options, Mapping):
        options = dict(zip(OPTION_LETTERS, options))
    text = f"{hint}\n{question}" if hint else question
    for letter, option in options.items():
        text += f"\n{letter}. {option}"
    return f"{text}\n{suffix}"


def with_suffix(text: str, suffix: str) -> str:
    """Append the LLaVA instruction once (LLaVA's own jsonl files already contain it)."""
    text = text.rstrip()
    return text if text.endswith(suffix) else f"{text}\n{suffix}"


def circular_copy(options: Mapping[str, str], answer: str | None, k: int) -> tuple[dict[str, str], str | None]:
    """Circular copy ``k`` of a question: letter i shows original option (i + k) mod n.

    Returns the rotated options and the letter the gold answer moved to (``None`` when
    ``answer`` is not one of the letters), as LLaVA ``model_vqa_mmbench.py --all-rounds``.
    """
    letters = list(options)
    texts = list(options.values())
    rotated = dict(zip(letters, texts[k:] + texts[:k]))
    moved = letters[(letters.index(answer) - k) % len(letters)] if answer in letters else None
    return rotated, moved


def consecutive_options(found: Mapping[str, str]) -> dict[str, str]:
    """The options of ``found`` from ``A`` up to the first missing letter."""
    out = {}
    for letter in OPTION_LETTERS:
        if letter not in found:
            break
        out[letter] = found[letter]
    return out


def options_from_lines(text: str) -> dict[str, str]:
    """Options written one per line as ``A. text`` (LLaVA-1.5 / RealWorldQA style)."""
    found = dict(re.findall(r"(?m)^([A-J])\.\s+(.*\S)\s*$", text))
    return consecutive_options(found)


def options_from_parens(text: str) -> dict[str, str]:
    """Options written inline as ``(A) text (B) text`` (ScienceQA CQM-A style)."""
    found = {m.group(1): m.group(2).strip() for m in re.finditer(r"\(([A-J])\)\s*(.*?)(?=\s*\([A-J]\)|\n|$)", text)}
    return consecutive_options(found)
