"""Pure scoring functions for the benchmark readers of :mod:`victor.eval`.

Everything here works on plain strings and lists, so each metric can be tested alone.
All rates are fractions in [0, 1] (multiply by 100 for the numbers printed in papers).

Conventions followed (each function's docstring says which one):

* multiple choice: letter extraction in the spirit of VLMEvalKit's exact-matching stage
  (``can_infer_option`` then ``can_infer_text``) and LLaVA's ``eval_science_qa.py`` patterns;
* POPE: LLaVA ``llava/eval/eval_pope.py`` (first sentence, "No"/"not"/"no" as a word -> no);
* VQAv2: the official VQA evaluation (``vqaEval.py``: ``processPunctuation``,
  ``processDigitArticle``, leave-one-annotator-out accuracy ``min(1, #matches / 3)``);
* GQA: LLaVA ``scripts/convert_gqa_for_eval.py`` (``text.rstrip('.').lower()``) followed by the
  official GQA exact match;
* MMBench circular evaluation: VLMEvalKit (copies of one question share ``index % CIRCULAR_OFFSET``).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Hashable, Iterable, Mapping, Sequence

from .prompts import CIRCULAR_OFFSET

__all__ = [
    "accuracy",
    "binary_metrics",
    "circular_accuracy",
    "circular_groups",
    "extract_choice",
    "gqa_exact_match",
    "grouped_accuracy",
    "normalize_gqa_answer",
    "normalize_short_answer",
    "normalize_vqa_answer",
    "pope_yes_no",
    "vqa_soft_accuracy",
]


def accuracy(correct: Iterable[float | bool]) -> float:
    """Mean of per-item scores (bools or soft scores); 0.0 for an empty list."""
    values = [float(c) for c in correct]
    return sum(values) / len(values) if values else 0.0


def grouped_accuracy(
    groups: Sequence[Hashable], correct: Sequence[float | bool]
) -> dict[str, dict[str, float]]:
    """Per-group ``{"n": count, "accuracy": mean}``, groups sorted by name.

    ``groups[i]`` is the group of item ``i`` (e.g. its MMBench ``category``); ``None``
    becomes the group ``"unknown"``.
    """
    if len(groups) != len(correct):
        raise ValueError(f"groups ({len(groups)}) and correct ({len(correct)}) differ in length")
    buckets: dict[str, list[float]] = defaultdict(list)
    for group, value in zip(groups, correct):
        buckets["unknown" if group is None else str(group)].append(float(value))
    return {g: {"n": len(v), "accuracy": accuracy(v)} for g, v in sorted(buckets.items())}


def circular_groups(rows: Iterable[tuple[int, bool]]) -> dict[int, bool]:
    """Map ``index % CIRCULAR_OFFSET`` -> whether every circular copy of that question is right.

    VLMEvalKit stores the k-th circular (option-rotated) copy of MMBench question ``i`` as
    row ``i + k * CIRCULAR_OFFSET`` (1_000_000); a question passes CircularEval only if all
    copies pass.
    """
    passed: dict[int, bool] = {}
    for index, correct in rows:
        key = int(index) % CIRCULAR_OFFSET
        passed[key] = passed.get(key, True) and bool(correct)
    return passed


def circular_accuracy(rows: Iterable[tuple[int, bool]]) -> float:
    """Fraction of questions whose circular copies are *all* correct.

    ``rows`` are ``(index, correct)`` pairs, one per TSV row.  Example: copies
    ``5, 1000005, 2000005, 3000005`` with one wrong answer count as one failed question.
    """
    groups = circular_groups(rows)
    return accuracy(groups.values())


_WRAP_CHARS = " \t\r\n*_`'\"()[]{}<>.:,;!?"
# "B", "(B)", "B.", "B)", "B:", "[B]" at the very start, then whitespace or the end.
_LEADING_UPPER = re.compile(r"^[\s*_`]*[(\[]?([A-Z])(?:[)\].:,]|(?=\s)|$)")
_LEADING_LOWER = re.compile(r"^[\s*_`]*(?:[(\[]([a-z])[)\]]|([a-z])[).:](?=\s|$))")
# "The answer is B", "Answer: b", "correct option is (C)", "Choice D"
_KEYWORD = re.compile(
    r"\b(?:answer|option|choice)s?\b\s*(?:is|would be|should be|:|-)?\s*(?:option\s+|choice\s+)?"
    r"([(\[]?)([A-Za-z])(?![A-Za-z])(.?)",
    re.IGNORECASE,
)
_STANDALONE_UPPER = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")


def _is_article_use(text: str, end: int) -> bool:
    """True when the capital letter ending at ``end`` reads as the word "A"/"I" ("A cat")."""
    return text[end - 1 : end] in ("A", "I") and bool(re.match(r" +[a-z]", text[end:]))


def _norm_text(s: str) -> str:
    s = re.sub(r"[^\w\s]", " ", str(s).lower())
    return " ".join(s.split())


def _match_option_text(text: str, options: Mapping[str, str]) -> str | None:
    """Letter whose option text the answer equals or uniquely contains (VLMEvalKit can_infer_text)."""
    response = _norm_text(text)
    if not response:
        return None
    normed = {k: _norm_text(v) for k, v in options.items() if v is not None and _norm_text(v)}
    exact = [k for k, v in normed.items() if v == response]
    if len(exact) == 1:
        return exact[0]
    found = [k for k, v in normed.items() if re.search(r"(?<!\w)" + re.escape(v) + r"(?!\w)", response)]
    if len(found) > 1:  # "light blue" contains "blue": keep only the most specific matches
        found = [k for k in found if not any(normed[k] != normed[o] and normed[k] in normed[o] for o in found)]
    return found[0] if len(found) == 1 else None


def extract_choice(text: str | None, options: Mapping[str, str]) -> str | None:
    """Return the option letter a free-form answer picks, or ``None``.

    ``options`` maps letters to option texts (``{"A": "red", "B": "blue"}``).  Tried in order:

    1. the whole answer is a letter, possibly wrapped: ``"B"``, ``"B."``, ``"(b)"``, ``"**C**"``;
    2. a leading letter with a delimiter: ``"B) blue"``, ``"B. blue"``, ``"(B) blue"``,
       ``"b) blue"`` (a lowercase letter needs ``)``/``.``/``:`` or brackets, so the article
       "a cat" is never read as option A); ``"B blue"`` only if no other option letter
       stands alone in the answer (``"B or C"`` is ambiguous);
    3. a keyword phrase: ``"The answer is B"``, ``"Answer: b"``, ``"the correct option is (C)"``;
    4. exactly one distinct capital option letter standing alone in the text ("I pick C.");
       a capital "A" followed by a lowercase word is read as the article;
    5. the option text itself: ``"blue"`` when it equals, or uniquely appears in, the answer.

    Letters that are not keys of ``options`` are ignored; ambiguous answers give ``None``.
    """
    if text is None:
        return None
    valid = {str(k).strip().upper() for k in options}
    s = str(text).strip()
    if not s:
        return None

    core = s.strip(_WRAP_CHARS)
    if len(core) == 1 and core.upper() in valid:
        return core.upper()

    standalone = {
        m.group(1)
        for m in _STANDALONE_UPPER.finditer(s)
        if m.group(1) in valid and not _is_article_use(s, m.end(1))
    }
    m = _LEADING_UPPER.match(s)
    if m and m.group(1) in valid and not _is_article_use(s, m.end(1)):
        delimited = m.end() > m.end(1) or s[: m.start(1)].strip(" *_`") != ""
        if delimited or standalone == {m.group(1)}:  # "B blue" yes, "B or C" no
            return m.group(1)
    m = _LEADING_LOWER.match(s)
    if m:
        letter = (m.group(1) or m.group(2)).upper()
        if letter in valid:
            return letter

    for m in _KEYWORD.finditer(s):
        opening, letter, after = m.group(1), m.group(2), m.group(3)
        if letter.upper() not in valid:
            continue
        if letter.isupper() and not _is_article_use(s, m.end(2)):
            return letter
        if letter.islower() and (opening or after in ("", ")", "]", ".", ",", ":", ";", "!")):
            return letter.upper()

    if len(standalone) == 1:
        return standalone.pop()
    if len(standalone) > 1:
        return None

    letter = _match_option_text(s, {k.upper(): v for k, v in options.items()})
    return letter


def pope_yes_no(text: str | None) -> str:
    """Map a free-form answer to ``"yes"``/``"no"`` exactly like LLaVA ``eval_pope.py``.

    Keep only the text before the first ``.``, drop commas, split on single spaces; the
    answer is ``"no"`` if ``"No"``, ``"not"`` or ``"no"`` is one of the words, else ``"yes"``
    (so an empty answer counts as "yes", and "NO" as well, as in the reference script).
    """
    t = "" if text is None else str(text)
    if "." in t:
        t = t.split(".")[0]
    words = t.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _as_positive(label: Any) -> bool:
    if isinstance(label, bool):
        return label
    return str(label).strip().lower() != "no"


def binary_metrics(preds: Sequence[Any], golds: Sequence[Any]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio with "yes" as the positive class.

    Follows LLaVA ``eval_pope.py``: labels other than ``"no"`` count as positive;
    ``yes_ratio`` is the share of *predictions* that are "yes".  Undefined ratios
    (no positive predictions, ...) are reported as 0.0 instead of raising.
    """
    if len(preds) != len(golds):
        raise ValueError(f"preds ({len(preds)}) and golds ({len(golds)}) differ in length")
    tp = fp = tn = fn = 0
    for p, g in zip(preds, golds):
        p_pos, g_pos = _as_positive(p), _as_positive(g)
        if p_pos and g_pos:
            tp += 1
        elif p_pos:
            fp += 1
        elif g_pos:
            fn += 1
        else:
            tn += 1
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
    }


# Word -> canonical form table of the official VQA evaluation ("contractions" in vqaEval.py),
# written here as "key=value" pairs.  The official table also has capitalised keys ("Im",
# "Ive", "Id've", "I'dve"); they can never match after lower-casing, so they are left out.
_CONTRACTIONS_TABLE = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll
let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've
mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock
oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've
twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't
whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll
whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've
wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll
y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd
youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
"""
VQA_CONTRACTIONS: dict[str, str] = dict(pair.split("=", 1) for pair in _CONTRACTIONS_TABLE.split())
VQA_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
VQA_ARTICLES = ("a", "an", "the")
VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                   ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period not followed by a digit
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")


def _vqa_process_punctuation(text: str) -> str:
    """Official ``processPunctuation``: a punctuation mark touching a space (or any mark when
    the answer has a digit-comma-digit like "1,000") is deleted, otherwise replaced by a
    space; then periods not followed by a digit are deleted ("3.5" keeps its period)."""
    out = text
    drop_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in VQA_PUNCTUATION:
        if drop_all or (p + " " in text or " " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _vqa_process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower-case, number words -> digits, drop articles,
    restore apostrophes of common contractions ("dont" -> "don't")."""
    words = [VQA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in VQA_ARTICLES]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(s: str | None) -> str:
    """Normalise an answer like the official VQA evaluation (and EvalAI's answer processor).

    newline/tab -> space, strip, ``processPunctuation``, then ``processDigitArticle``
    (which lower-cases).  ``"Two dogs."`` -> ``"2 dogs"``; ``"The cat's"`` -> ``"cat's"``.
    """
    t = "" if s is None else str(s)
    t = t.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_process_digit_article(_vqa_process_punctuation(t))


def vqa_soft_accuracy(pred: str | None, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the (10) human answers.

    Official definition: for each annotator, ``min(1, #matches among the *other* answers / 3)``,
    averaged over annotators.  Prediction and answers are both passed through
    :func:`normalize_vqa_answer` (the official script normalises the answers only when they
    disagree; EvalAI pre-normalises predictions; normalising both makes the score independent
    of answer casing/punctuation).  With 2 of 10 matching answers this gives 0.6, not 2/3.
    """
    if not answers:
        raise ValueError("vqa_soft_accuracy needs at least one reference answer")
    p = normalize_vqa_answer(pred)
    gts = [normalize_vqa_answer(a) for a in answers]
    scores = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == p)
        scores.append(min(1.0, matches / 3.0))
    return sum(scores) / len(scores)


def normalize_gqa_answer(s: str | None) -> str:
    """LLaVA ``convert_gqa_for_eval.py``: ``text.rstrip('.').lower()`` (plus outer whitespace)."""
    return ("" if s is None else str(s)).strip().rstrip(".").strip().lower()


def gqa_exact_match(pred: str | None, answer: str | None) -> bool:
    """GQA accuracy for one question: normalised prediction equals the gold answer."""
    if answer is None:
        return False
    return normalize_gqa_answer(pred) == normalize_gqa_answer(answer)


def normalize_short_answer(s: str | None) -> str:
    """Lower-case, strip, drop a trailing period, number words zero..ten -> digits.

    Used for free-form RealWorldQA answers (lmms-eval ``NumberWordsToDigitsFilter`` +
    ``exact_match`` with ``ignore_case``)."""
    t = normalize_gqa_answer(s)
    return VQA_NUMBER_WORDS.get(t, t) if t != "none" else t
