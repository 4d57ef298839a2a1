"""Readers for benchmark files in their released on-disk formats, with LLaVA-1.5 prompts.

Every reader returns ``list[EvalItem]``; every benchmark is registered in ``BENCHMARKS`` as a
spec object with ``.load(path, image_root)``, ``.score(items, predictions)`` and ``.kind``.
Prompts never contain the ``<image>`` token: the caller's chat template places the image.

Prompt conventions (LLaVA-1.5 ``scripts/v1_5/eval/*.sh`` and ``llava/eval/model_vqa*.py``):

* multiple choice (MMBench, SEED, ScienceQA, MMStar): ``[hint\\n]question`` then one line per
  option ``"A. text"``, then ``"\\nAnswer with the option's letter from the given choices
  directly."`` (``--single-pred-prompt``);
* short answers (POPE, GQA, VQAv2): ``question + "\\nAnswer the question using a single word
  or phrase."``;
* MM-Vet, LLaVA-Bench in-the-wild, RealWorldQA: the question text as released.

``score`` returns ``{"metrics": {...}, "tables": {name: {group: {...}}}}``.  Items without a
prediction are not scored (``n_missing``), items without a gold answer (test splits) neither
(``n_unlabeled``).  All rates are fractions in [0, 1].
"""
from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import metrics as M

__all__ = [
    "BENCHMARKS",
    "BenchmarkFormatError",
    "EvalItem",
    "MC_SUFFIX",
    "SHORT_SUFFIX",
    "get_benchmark",
    "mc_prompt",
]

MC_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT_SUFFIX = "Answer the question using a single word or phrase."
LETTERS = "ABCDEFGHIJ"


@dataclass
class EvalItem:
    """One benchmark question, independent of any model."""

    id: str  # unique per item (MMBench: the row index)
    prompt: str  # full user text without the <image> token
    image: Any  # PIL.Image.Image (decoded base64), a file path (str), or None
    answer: Any  # gold: letter, "yes"/"no", short answer, list of 10 VQA answers, None if unknown
    meta: dict = field(default_factory=dict)  # keys starting with "_" stay out of predictions.jsonl


class BenchmarkFormatError(ValueError):
    """A file is not in the format the benchmark reader expects."""


def _fail(path: Any, where: str, what: str, fmt: str) -> BenchmarkFormatError:
    return BenchmarkFormatError(f"{path}: {where}: {what} (is this really a {fmt} file?)")


def _require(record: Mapping, fields: Iterable[str], path: Any, where: str, fmt: str) -> None:
    if not isinstance(record, Mapping):
        raise _fail(path, where, f"expected an object, got {type(record).__name__}", fmt)
    for f in fields:
        if f not in record:
            raise _fail(path, where, f"missing field '{f}'", fmt)


# --------------------------------------------------------------------------------------
# Small helpers: missing values, tables, images
# --------------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    """pandas writes empty cells as NaN; LLaVA ``is_none`` also treats 'nan'/'none' as missing."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def _text(value: Any) -> str:
    return "" if _is_missing(value) else str(value)


def _read_json(path: Path, fmt: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise _fail(path, f"line {e.lineno}", f"not valid JSON ({e.msg})", fmt) from None


def _read_jsonl(path: Path, fmt: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise _fail(path, f"line {lineno}", f"not valid JSON ({e.msg})", fmt) from None
            if not isinstance(rows[-1], dict):
                raise _fail(path, f"line {lineno}", "expected a JSON object per line", fmt)
    return rows


def _read_delimited(path: Path, fmt: str, required: Iterable[str] = ()) -> list[dict]:
    """TSV/CSV as written by pandas (``to_csv(sep='\\t')``): quoted fields may hold newlines.

    ``required`` columns are checked against the header row."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images exceed the 128 KiB default
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise _fail(path, "line 1", "empty file, expected a header row", fmt)
        for column in required:
            if column not in header:
                raise _fail(path, "header (line 1)", f"missing column '{column}'", fmt)
        rows = []
        for lineno, cells in enumerate(reader, 2):
            if not cells:
                continue
            if len(cells) != len(header):
                raise _fail(path, f"row {lineno - 1}", f"{len(cells)} cells for {len(header)} header columns", fmt)
            rows.append(dict(zip(header, cells)))
    return rows


def _read_table(path: Path, fmt: str) -> list[dict]:
    """Records of a .tsv/.csv/.jsonl/.json (list of objects)/.parquet (needs pyarrow) file."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return _read_delimited(path, fmt)
    if suffix == ".jsonl":
        return _read_jsonl(path, fmt)
    if suffix == ".json":
        data = _read_json(path, fmt)
        if not isinstance(data, list):
            raise _fail(path, "top level", "expected a JSON list of records", fmt)
        return data
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise _fail(path, "file", "reading .parquet needs pyarrow; export to JSONL/TSV instead", fmt) from None
        return pq.read_table(path).to_pylist()
    raise _fail(path, "file name", f"unsupported extension '{suffix}' (use .tsv, .csv, .jsonl, .json)", fmt)


_B64_RE = re.compile(r"^[A-Za-z0-9+/=\s]+$")
_B64_IMAGE_MAGIC = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR")  # PNG, JPEG, GIF, WebP


def _open_base64(data: str, path: Any, where: str, fmt: str):
    from PIL import Image

    try:
        raw = base64.b64decode(data)
        return Image.open(io.BytesIO(raw))  # lazy: pixels decoded when first used
    except (binascii.Error, ValueError, OSError) as e:
        raise _fail(path, where, f"field 'image' is not a base64-encoded image ({e})", fmt) from None


def _image_field(value: Any, image_root: Path | None, path: Any, where: str, fmt: str):
    """Decode the usual ways an image is stored: base64 string, HF export dict, relative path."""
    if _is_missing(value):
        return None
    if isinstance(value, dict):  # Hugging Face `Image` feature exported to JSON
        if value.get("bytes"):
            raw = value["bytes"]
            if isinstance(raw, list):
                raw = bytes(raw)
            if isinstance(raw, bytes):
                from PIL import Image

                return Image.open(io.BytesIO(raw))
            return _open_base64(raw, path, where, fmt)
        value = value.get("path")
        if _is_missing(value):
            return None
    s = str(value)
    if "." not in s and _B64_RE.match(s) and (len(s) >= 128 or s.startswith(_B64_IMAGE_MAGIC)):
        return _open_base64(s, path, where, fmt)
    return _resolve(s, image_root)


def _resolve(name: str, image_root: Path | None) -> str:
    return str(Path(image_root) / name) if image_root is not None else name


def _default_root(path: Path, image_root: Any) -> Path:
    """Relative image paths resolve against ``image_root`` or else the data file's folder."""
    if image_root is not None:
        return Path(image_root)
    return path if path.is_dir() else path.parent


def _with_suffix(text: str, suffix: str) -> str:
    """Append the LLaVA instruction once (LLaVA's own jsonl files already contain it)."""
    text = text.rstrip()
    return text if text.endswith(suffix) else f"{text}\n{suffix}"


def mc_prompt(question: str, options: Mapping[str, str], hint: str | None = None) -> str:
    """LLaVA-1.5 multiple-choice prompt (``model_vqa_mmbench.py`` with ``--single-pred-prompt``)."""
    text = f"{hint}\n{question}" if hint else question
    for letter, option in options.items():
        text += f"\n{letter}. {option}"
    return f"{text}\n{MC_SUFFIX}"


def _options_from_lines(text: str) -> dict[str, str]:
    """Options written one per line as ``A. text`` (LLaVA-1.5 / RealWorldQA style)."""
    found = dict(re.findall(r"(?m)^([A-J])\.\s+(.*\S)\s*$", text))
    return _consecutive(found)


def _options_from_parens(text: str) -> dict[str, str]:
    """Options written inline as ``(A) text (B) text`` (ScienceQA CQM-A style)."""
    found = {m.group(1): m.group(2).strip() for m in re.finditer(r"\(([A-J])\)\s*(.*?)(?=\s*\([A-J]\)|\n|$)", text)}
    return _consecutive(found)


def _options_from_mmstar(question: str) -> dict[str, str]:
    """MMStar inline options: ``...\\nOptions: A: text, B: text, C: text, D: text``."""
    m = re.search(r"Options:\s*(.*)$", question, re.S)
    if not m:
        return {}
    parts = re.split(r",\s*(?=[B-J]:\s)", m.group(1).strip())
    found = {}
    for part in parts:
        mm = re.match(r"([A-J]):\s*(.*)$", part.strip(), re.S)
        if mm:
            found[mm.group(1)] = mm.group(2).strip()
    return _consecutive(found)


def _consecutive(found: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for letter in LETTERS:
        if letter not in found:
            break
        out[letter] = found[letter]
    return out


def _public_meta(meta: Mapping) -> dict:
    return {k: v for k, v in meta.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------
# Spec base classes
# --------------------------------------------------------------------------------------
class BenchmarkSpec:
    """Base: ``load`` files, ``score`` predictions; subclasses set name/kind/metrics."""

    name = "base"
    kind = "unknown"  # multiple_choice | yes_no | short_answer | vqa | judged
    main_metric: str | None = "accuracy"
    report_metrics: tuple[str, ...] = ("accuracy",)
    submission_filename: str | None = None
    format_name = "benchmark"

    def load(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[EvalItem]:
        raise NotImplementedError

    def score(self, items: list[EvalItem], predictions: Mapping[str, str]) -> dict:
        raise NotImplementedError

    def _split(self, items: list[EvalItem], predictions: Mapping[str, str]):
        """Items with both a prediction and a gold answer, plus the counts of the others."""
        usable, missing, unlabeled = [], 0, 0
        for item in items:
            if item.id not in predictions:
                missing += 1
            elif item.answer is None:
                unlabeled += 1
            else:
                usable.append((item, predictions[item.id]))
        return usable, {"n_scored": len(usable), "n_missing": missing, "n_unlabeled": unlabeled}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} kind={self.kind}>"


class MultipleChoiceSpec(BenchmarkSpec):
    """Letter answers parsed with :func:`metrics.extract_choice`; per-group accuracy tables."""

    kind = "multiple_choice"
    group_keys: tuple[str, ...] = ("category",)
    report_metrics = ("accuracy",)

    def judge(self, item: EvalItem, prediction: str) -> tuple[str | None, bool]:
        choice = M.extract_choice(prediction, item.meta.get("options", {}))
        return choice, choice is not None and choice == str(item.answer).strip().upper()

    def score(self, items, predictions):
        usable, counts = self._split(items, predictions)
        judged = [self.judge(item, pred) for item, pred in usable]
        correct = [ok for _, ok in judged]
        result_metrics = {"accuracy": M.accuracy(correct), **counts,
                          "n_unparsed": sum(1 for choice, _ in judged if choice is None)}
        tables = {}
        for key in self.group_keys:
            tables[key] = M.grouped_accuracy([item.meta.get(key) for item, _ in usable], correct)
        return {"metrics": result_metrics, "tables": tables}


# --------------------------------------------------------------------------------------
# MMBench
# --------------------------------------------------------------------------------------
class MMBenchSpec(MultipleChoiceSpec):
    """MMBench TSV (OpenCompass / VLMEvalKit release, e.g. ``mmbench_dev_20230712.tsv``).

    Columns: ``index, question, hint, A, B, C, D, answer, category, l2-category, image``
    (+ optional ``source, split, comment``).  ``answer`` is absent in test splits; empty
    option cells end the option list (LLaVA ``get_options``); ``image`` is base64, or, in
    VLMEvalKit releases, the ``index`` of another row whose image is reused (<= 64 chars).
    Circular copies (VLMEvalKit) are rows ``index + k * 1_000_000`` with rotated options.
    With ``circular=True`` the reader creates those copies itself when the file has none,
    rotating options as LLaVA ``model_vqa_mmbench.py --all-rounds`` does.
    """

    name = "mmbench"
    format_name = "MMBench TSV"
    group_keys = ("category", "l2-category")
    main_metric = "circular_accuracy"
    report_metrics = ("circular_accuracy", "accuracy")
    submission_filename = "submission.tsv"

    def __init__(self, circular: bool = False, name: str | None = None):
        self.circular = circular
        if name:
            self.name = name

    def load(self, path, image_root=None):
        path = Path(path)
        rows = _read_delimited(path, self.format_name, required=("index", "question", "A", "B", "image"))
        images = self._image_map(rows, path)
        items = []
        for i, row in enumerate(rows):
            items.append(self._item(row, images, path, f"row {i + 1} (index {row['index']})"))
        if self.circular and all(int(it.meta["index"]) < M.CIRCULAR_MODULUS for it in items):
            items = [copy for it in items for copy in self._rotations(it)]
        return items

    def _image_map(self, rows, path):
        raw = {str(r["index"]).strip(): r["image"] for r in rows}
        images, cache = {}, {}
        for i, row in enumerate(rows):
            key, value = str(row["index"]).strip(), str(row["image"]).strip()
            if len(value) <= 64:  # VLMEvalKit: a short cell names the row holding the image
                if value not in raw or len(str(raw[value]).strip()) <= 64:
                    raise _fail(path, f"row {i + 1} (index {key})",
                                f"field 'image' neither base64 nor the index of a row with an image: {value!r}",
                                self.format_name)
                value = str(raw[value]).strip()
            if value not in cache:
                cache[value] = _open_base64(value, path, f"row {i + 1} (index {key})", self.format_name)
            images[key] = cache[value]
        return images

    def _item(self, row, images, path, where):
        try:
            index = int(float(row["index"]))
        except ValueError:
            raise _fail(path, where, f"field 'index' is not an integer: {row['index']!r}", self.format_name) from None
        options = {}
        for letter in LETTERS:
            if letter not in row or _is_missing(row[letter]):
                break
            options[letter] = str(row[letter])
        hint = None if _is_missing(row.get("hint")) else str(row["hint"])
        answer = None if _is_missing(row.get("answer")) else str(row["answer"]).strip()
        meta = {
            "index": index,
            "category": _text(row.get("category")) or None,
            "l2-category": _text(row.get("l2-category", row.get("l2_category"))) or None,
            "options": options,
            "split": _text(row.get("split")) or None,
            "source": _text(row.get("source")) or None,
            "hint": hint,
            "question": str(row["question"]),
            "_row": {k: v for k, v in row.items() if k != "image"},
        }
        return EvalItem(str(index), mc_prompt(str(row["question"]), options, hint),
                        images[str(row["index"]).strip()], answer, meta)

    def _rotations(self, item: EvalItem) -> list[EvalItem]:
        """Copy k: letter i shows original option (i + k) mod n (LLaVA ``--all-rounds``)."""
        letters = list(item.meta["options"])
        texts = list(item.meta["options"].values())
        out = [item]
        for k in range(1, len(letters)):
            options = dict(zip(letters, texts[k:] + texts[:k]))
            answer = None
            if item.answer in letters:
                answer = letters[(letters.index(item.answer) - k) % len(letters)]
            index = item.meta["index"] + k * M.CIRCULAR_MODULUS
            meta = {**item.meta, "index": index, "options": options, "circular_copy": k}
            meta.pop("_row", None)
            prompt = mc_prompt(item.meta["question"], options, item.meta["hint"])
            out.append(EvalItem(str(index), prompt, item.image, answer, meta))
        return out

    def score(self, items, predictions):
        result = super().score(items, predictions)
        usable, _ = self._split(items, predictions)
        rows = [(item.meta["index"], self.judge(item, pred)[1]) for item, pred in usable]
        result["metrics"]["circular_accuracy"] = M.circular_accuracy(rows)
        result["metrics"]["n_questions"] = len(M.circular_groups(rows))
        for key in self.group_keys:
            groups = {}
            for (item, _), row in zip(usable, rows):
                groups.setdefault(item.meta.get(key) or "unknown", []).append(row)
            for group, group_rows in groups.items():
                entry = result["tables"][key][str(group)]
                entry["circular_accuracy"] = M.circular_accuracy(group_rows)
                entry["n_questions"] = len(M.circular_groups(group_rows))
        return result

    def write_submission(self, items, predictions, path) -> list[str]:
        """TSV (+ ``.xlsx`` if openpyxl is importable) of the file's own rows: original
        columns without ``image`` and a ``prediction`` column after the options, as LLaVA
        ``convert_mmbench_for_submission.py`` prepares uploads.  Returns the written paths."""
        rows = [it for it in items if "_row" in it.meta]
        if not rows:
            return []
        header = list(rows[0].meta["_row"])
        last_option = max((header.index(c) for c in LETTERS if c in header), default=len(header) - 1)
        header.insert(last_option + 1, "prediction")
        table = [[it.meta["_row"].get(c, "") if c != "prediction" else predictions.get(it.id, "")
                  for c in header] for it in rows]
        path = Path(path)
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(header)
            writer.writerows(table)
        written = [str(path)]
        try:
            import openpyxl
        except ImportError:
            return written
        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(header)
        for r in table:
            sheet.append(r)
        book.save(path.with_suffix(".xlsx"))
        return written + [str(path.with_suffix(".xlsx"))]


# --------------------------------------------------------------------------------------
# SEED-Bench
# --------------------------------------------------------------------------------------
class SeedSpec(MultipleChoiceSpec):
    """SEED-Bench ``SEED-Bench.json``: ``{"question_type": {name: id}, "questions": [...]}``.

    Each question has ``question_id, question, choice_a..choice_d, answer, data_id,
    question_type_id, data_type``; only ``data_type == "image"`` questions are kept (as in
    LLaVA-1.5's SEED-image numbers); the image is ``image_root/data_id``.  Scored per
    question type (names from the top-level ``question_type`` mapping).
    """

    name = "seed"
    format_name = "SEED-Bench JSON"
    group_keys = ("question_type",)
    submission_filename = "submission.jsonl"

    def load(self, path, image_root=None):
        path = Path(path)
        data = _read_json(path, self.format_name)
        _require(data, ("questions",), path, "top level", self.format_name)
        type_names = {str(v): k for k, v in (data.get("question_type") or {}).items()}
        root = _default_root(path, image_root)
        items = []
        for i, q in enumerate(data["questions"]):
            where = f"questions[{i}]"
            _require(q, ("question_id", "question", "choice_a", "choice_b", "data_id"), path, where, self.format_name)
            if q.get("data_type", "image") != "image":
                continue
            options = {}
            for letter in "ABCD":
                key = f"choice_{letter.lower()}"
                if key not in q or _is_missing(q[key]):
                    break
                options[letter] = str(q[key])
            type_id = q.get("question_type_id")
            meta = {"question_type_id": type_id,
                    "question_type": type_names.get(str(type_id), str(type_id)),
                    "options": options, "data_id": q["data_id"]}
            answer = None if _is_missing(q.get("answer")) else str(q["answer"]).strip()
            items.append(EvalItem(str(q["question_id"]), mc_prompt(str(q["question"]), options),
                                  _resolve(str(q["data_id"]), root), answer, meta))
        return items

    def write_submission(self, items, predictions, path) -> list[str]:
        """One ``{"question_id", "prediction"}`` line per question, the upload format
        produced by LLaVA ``convert_seed_for_submission.py`` (prediction = parsed letter)."""
        with open(path, "w", encoding="utf-8") as f:
            for it in items:
                if it.id in predictions:
                    choice = M.extract_choice(predictions[it.id], it.meta["options"]) or predictions[it.id]
                    f.write(json.dumps({"question_id": it.id, "prediction": choice}) + "\n")
        return [str(path)]


# --------------------------------------------------------------------------------------
# MMStar
# --------------------------------------------------------------------------------------
class MMStarSpec(MultipleChoiceSpec):
    """MMStar (HF ``Lin-Chen/MMStar`` parquet exported to JSONL/TSV, or VLMEvalKit ``MMStar.tsv``).

    Columns ``index, question, answer, category, l2_category`` (or ``l2-category``) and
    ``image`` (base64, HF export dict, or path).  The question embeds its options
    (``"...\\nOptions: A: x, B: y, C: z, D: w"``); separate ``A..D`` columns are used when
    present.  Prompt: question + ``"\\nAnswer with the option's letter ..."`` (lmms-eval
    ``mmstar`` with the LLaVA post-prompt).  Reported: overall accuracy, per category and
    per l2-category, and ``l2_macro_accuracy`` (mean of l2 accuracies, lmms-eval "average").
    """

    name = "mmstar"
    format_name = "MMStar"
    group_keys = ("category", "l2_category")
    report_metrics = ("accuracy", "l2_macro_accuracy")

    def load(self, path, image_root=None):
        path = Path(path)
        root = _default_root(path, image_root)
        items = []
        for i, row in enumerate(_read_table(path, self.format_name)):
            where = f"record {i + 1}"
            _require(row, ("question", "answer", "image"), path, where, self.format_name)
            question = str(row["question"]).strip()
            options = {L: str(row[L]) for L in "ABCD" if L in row and not _is_missing(row[L])}
            if options:
                prompt = mc_prompt(question, options)
            else:
                options = _options_from_mmstar(question)
                prompt = _with_suffix(question, MC_SUFFIX)
            meta = {"index": row.get("index", i), "category": _text(row.get("category")) or None,
                    "l2_category": _text(row.get("l2_category", row.get("l2-category"))) or None,
                    "options": options}
            answer = None if _is_missing(row.get("answer")) else str(row["answer"]).strip()
            image = _image_field(row["image"], root, path, where, self.format_name)
            items.append(EvalItem(str(row.get("index", i)), prompt, image, answer, meta))
        return items

    def score(self, items, predictions):
        result = super().score(items, predictions)
        l2 = result["tables"]["l2_category"]
        result["metrics"]["l2_macro_accuracy"] = M.accuracy(v["accuracy"] for v in l2.values())
        return result


# --------------------------------------------------------------------------------------
# RealWorldQA
# --------------------------------------------------------------------------------------
class RealWorldQASpec(MultipleChoiceSpec):
    """RealWorldQA (HF ``xai-org/RealworldQA`` / ``lmms-lab/RealWorldQA``) exported to JSONL/TSV.

    Columns ``question, answer, image`` (+ optional ``index``/``id``).  The released question
    already lists options as ``"A. text"`` lines and ends with its own instruction, so the
    prompt is the question as released (lmms-eval default).  Gold is a letter for multiple
    choice questions (scored with ``extract_choice``) or a word/number for open ones (exact
    match after lower-casing, trailing-period removal and number-word -> digit mapping).
    """

    name = "realworldqa"
    format_name = "RealWorldQA"
    group_keys = ("question_format",)

    def load(self, path, image_root=None):
        path = Path(path)
        root = _default_root(path, image_root)
        items = []
        for i, row in enumerate(_read_table(path, self.format_name)):
            where = f"record {i + 1}"
            _require(row, ("question", "answer", "image"), path, where, self.format_name)
            question = str(row["question"]).strip()
            options = _options_from_lines(question)
            answer = None if _is_missing(row.get("answer")) else str(row["answer"]).strip()
            is_mc = bool(options) and answer is not None and answer.upper() in options
            meta = {"options": options, "question_format": "multiple_choice" if is_mc else "open"}
            item_id = str(row.get("index", row.get("id", i)))
            image = _image_field(row["image"], root, path, where, self.format_name)
            items.append(EvalItem(item_id, question, image, answer, meta))
        return items

    def judge(self, item, prediction):
        if item.meta["question_format"] == "multiple_choice":
            return super().judge(item, prediction)
        pred = M.normalize_short_answer(prediction)
        return pred, pred == M.normalize_short_answer(item.answer)


# --------------------------------------------------------------------------------------
# ScienceQA-IMG
# --------------------------------------------------------------------------------------
class ScienceQASpec(MultipleChoiceSpec):
    """ScienceQA test questions that have an image (ScienceQA-IMG, as LLaVA-1.5 reports).

    Accepted layouts:

    * LLaVA ``llava_test_CQM-A.json`` (list of ``{"id", "image", "conversations"}``): the prompt
      is the human turn without ``<image>`` + the MC suffix (``model_vqa_science.py
      --single-pred-prompt``).  Gold comes from ``problems.json`` next to it (or in its parent
      folder) when present, else from the ``gpt`` turn.  Images: ``image_root/<image>``.
    * the official ``problems.json`` (dict pid -> problem, with ``pid_splits.json`` beside it
      to select the ``test`` split) or a directory holding them; images at
      ``image_root/<pid>/image.png``.
    * a JSONL/TSV export of the HF dataset (columns ``question, choices, answer (int), hint,
      image``, optional ``subject, grade, id``).

    For the last two the prompt is ``"Context: {hint}\\n"`` (if any) + question + ``"A. ..."``
    lines + the MC suffix (lmms-eval ``scienceqa_img`` default).  Tables: per ``subject``.
    """

    name = "scienceqa"
    format_name = "ScienceQA"
    group_keys = ("subject",)

    def load(self, path, image_root=None):
        path = Path(path)
        if path.is_dir():
            return self._load_problems(path / "problems.json", image_root)
        if path.suffix.lower() == ".json":
            data = _read_json(path, self.format_name)
            if isinstance(data, list):
                return self._load_llava(path, data, image_root)
            return self._load_problems(path, image_root, data)
        return self._load_rows(path, image_root)

    def _load_llava(self, path, data, image_root):
        problems = self._find_problems(path)
        root = _default_root(path, image_root)
        items = []
        for i, rec in enumerate(data):
            where = f"record {i} (id {rec.get('id') if isinstance(rec, dict) else '?'})"
            _require(rec, ("id", "conversations"), path, where, self.format_name)
            if "image" not in rec:
                continue
            turns = rec["conversations"]
            if not turns or not isinstance(turns[0], dict) or "value" not in turns[0]:
                raise _fail(path, where, "missing field 'conversations[0].value'", self.format_name)
            question = turns[0]["value"].replace("<image>", "").strip()
            options = _options_from_lines(question) or _options_from_parens(question)
            problem = problems.get(str(rec["id"])) if problems else None
            if problem is not None:
                answer = LETTERS[int(problem["answer"])]
                meta = {"subject": problem.get("subject"), "grade": problem.get("grade")}
            else:
                gold = turns[1].get("value", "") if len(turns) > 1 and isinstance(turns[1], dict) else ""
                answer = M.extract_choice(gold, options) if gold else None
                meta = {"subject": None}
            meta["options"] = options
            items.append(EvalItem(str(rec["id"]), _with_suffix(question, MC_SUFFIX),
                                  _resolve(str(rec["image"]), root), answer, meta))
        return items

    @staticmethod
    def _find_problems(path: Path) -> dict | None:
        for folder in (path.parent, path.parent.parent):
            candidate = folder / "problems.json"
            if candidate.is_file():
                with open(candidate, encoding="utf-8") as f:
                    return json.load(f)
        return None

    def _load_problems(self, path, image_root, data=None):
        data = _read_json(path, self.format_name) if data is None else data
        if not isinstance(data, dict):
            raise _fail(path, "top level", "expected a dict of problem id -> problem", self.format_name)
        splits_file = path.parent / "pid_splits.json"
        keep = None
        if splits_file.is_file():
            with open(splits_file, encoding="utf-8") as f:
                keep = set(json.load(f).get("test", []))
        root = _default_root(path, image_root)
        items = []
        for pid, problem in data.items():
            if keep is not None and pid not in keep:
                continue
            if keep is None and isinstance(problem, dict) and problem.get("split", "test") != "test":
                continue
            _require(problem, ("question", "choices", "answer"), path, f"problem '{pid}'", self.format_name)
            if not problem.get("image"):
                continue
            image = _resolve(f"{pid}/{problem['image']}", root)
            items.append(self._build(pid, problem, image))
        return items

    def _load_rows(self, path, image_root):
        root = _default_root(path, image_root)
        items = []
        for i, row in enumerate(_read_table(path, self.format_name)):
            where = f"record {i + 1}"
            _require(row, ("question", "choices", "answer", "image"), path, where, self.format_name)
            image = _image_field(row["image"], root, path, where, self.format_name)
            if image is None:
                continue
            choices = row["choices"]
            if isinstance(choices, str):
                try:
                    choices = json.loads(choices)
                except json.JSONDecodeError:
                    raise _fail(path, where, "field 'choices' is not a JSON list", self.format_name) from None
            items.append(self._build(str(row.get("id", i)), {**row, "choices": choices}, image))
        return items

    def _build(self, pid, problem, image):
        options = {LETTERS[i]: str(c) for i, c in enumerate(problem["choices"])}
        hint = _text(problem.get("hint")).strip()
        question = f"Context: {hint}\n{problem['question']}" if hint else str(problem["question"])
        meta = {"subject": problem.get("subject"), "grade": problem.get("grade"), "options": options}
        return EvalItem(str(pid), mc_prompt(question, options), image, LETTERS[int(problem["answer"])], meta)


# --------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------
class PopeSpec(BenchmarkSpec):
    """POPE annotation JSONL (``coco_pope_{random,popular,adversarial}.json``, one JSON object
    per line: ``question_id, image, text, label``), a directory of those files (category from
    the file name, as LLaVA ``eval_pope.py``), or LLaVA's ``llava_pope_test.jsonl`` (per-line
    ``category``; without ``label`` the items are unscored).  Prompt: text + short-answer
    suffix.  Item ids are ``"<category>/<question_id>"`` because ids repeat across files.
    Metrics per category and pooled; ``f1_category_mean`` is the number LLaVA-1.5 reports.
    """

    name = "pope"
    kind = "yes_no"
    format_name = "POPE JSONL"
    main_metric = "f1_category_mean"
    report_metrics = ("f1_category_mean", "accuracy", "f1", "precision", "recall", "yes_ratio")

    def load(self, path, image_root=None):
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("coco_pope_*.json"))
            if not files:
                raise _fail(path, "directory", "no coco_pope_*.json files", self.format_name)
        else:
            files = [path]
        root = Path(image_root) if image_root is not None else None
        items = []
        for file in files:
            default_category = file.stem[len("coco_pope_"):] if file.stem.startswith("coco_pope_") else file.stem
            for lineno, rec in self._records(file):
                where = f"line {lineno}"
                _require(rec, ("question_id", "image", "text"), file, where, self.format_name)
                category = str(rec.get("category") or default_category)
                label = rec.get("label")
                if label is not None and str(label).strip().lower() not in ("yes", "no"):
                    raise _fail(file, where, f"field 'label' must be yes/no, got {label!r}", self.format_name)
                items.append(EvalItem(
                    f"{category}/{rec['question_id']}", _with_suffix(str(rec["text"]), SHORT_SUFFIX),
                    _resolve(str(rec["image"]), root if root is not None else file.parent),
                    None if label is None else str(label).strip().lower(),
                    {"category": category, "question_id": rec["question_id"]}))
        return items

    def _records(self, file: Path):
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise _fail(file, f"line {lineno}", f"not valid JSON ({e.msg})", self.format_name) from None
                yield lineno, rec

    def score(self, items, predictions):
        usable, counts = self._split(items, predictions)
        preds = [M.pope_yes_no(pred) for _, pred in usable]
        golds = [item.answer for item, _ in usable]
        overall = M.binary_metrics(preds, golds)
        by_cat: dict[str, tuple[list, list]] = {}
        for (item, _), p, g in zip(usable, preds, golds):
            by_cat.setdefault(item.meta["category"], ([], []))
            by_cat[item.meta["category"]][0].append(p)
            by_cat[item.meta["category"]][1].append(g)
        table = {c: M.binary_metrics(p, g) for c, (p, g) in sorted(by_cat.items())}
        result_metrics = {k: overall[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")}
        result_metrics["f1_category_mean"] = M.accuracy(t["f1"] for t in table.values())
        result_metrics.update(counts)
        return {"metrics": result_metrics, "tables": {"category": table}}


# --------------------------------------------------------------------------------------
# GQA
# --------------------------------------------------------------------------------------
class GQASpec(BenchmarkSpec):
    """GQA ``testdev_balanced_questions.json`` (dict qid -> ``{imageId, question, answer,
    types: {structural, semantic, detailed}, ...}``; image ``image_root/<imageId>.jpg``) or
    LLaVA's ``llava_gqa_testdev_balanced.jsonl`` (``question_id, image, text`` [+ ``answer``]).
    Prompt: question + short-answer suffix; metric: exact match after LLaVA's
    ``rstrip('.').lower()``; tables per structural and semantic type."""

    name = "gqa"
    kind = "short_answer"
    format_name = "GQA questions JSON"

    def load(self, path, image_root=None):
        path = Path(path)
        root = _default_root(path, image_root)
        if path.suffix.lower() == ".jsonl":
            items = []
            for i, rec in enumerate(_read_jsonl(path, self.format_name)):
                _require(rec, ("question_id", "image", "text"), path, f"line {i + 1}", self.format_name)
                items.append(EvalItem(str(rec["question_id"]), _with_suffix(str(rec["text"]), SHORT_SUFFIX),
                                      _resolve(str(rec["image"]), root), rec.get("answer"),
                                      {"structural": None, "semantic": None, "category": rec.get("category")}))
            return items
        data = _read_json(path, self.format_name)
        if not isinstance(data, dict):
            raise _fail(path, "top level", "expected a dict of question id -> question", self.format_name)
        items = []
        for qid, q in data.items():
            _require(q, ("imageId", "question"), path, f"question '{qid}'", self.format_name)
            types = q.get("types") or {}
            meta = {"structural": types.get("structural"), "semantic": types.get("semantic"),
                    "imageId": q["imageId"]}
            items.append(EvalItem(str(qid), _with_suffix(str(q["question"]), SHORT_SUFFIX),
                                  _resolve(f"{q['imageId']}.jpg", root), q.get("answer"), meta))
        return items

    submission_filename = "gqa_predictions.json"

    def write_submission(self, items, predictions, path) -> list[str]:
        """``[{"questionId", "prediction"}]`` for the official GQA ``eval.py``, predictions
        normalised as LLaVA ``convert_gqa_for_eval.py`` does."""
        rows = [{"questionId": it.id, "prediction": M.normalize_gqa_answer(predictions[it.id])}
                for it in items if it.id in predictions]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f)
        return [str(path)]

    def score(self, items, predictions):
        usable, counts = self._split(items, predictions)
        correct = [M.gqa_exact_match(pred, item.answer) for item, pred in usable]
        keys = ("structural", "semantic", "category")
        tables = {key: M.grouped_accuracy([item.meta.get(key) for item, _ in usable], correct)
                  for key in keys if any(item.meta.get(key) is not None for item, _ in usable)}
        return {"metrics": {"accuracy": M.accuracy(correct), **counts}, "tables": tables}


# --------------------------------------------------------------------------------------
# VQAv2
# --------------------------------------------------------------------------------------
class VQAv2Spec(BenchmarkSpec):
    """VQAv2 official JSONs: ``v2_OpenEnded_mscoco_<subtype>_questions.json`` (``questions``:
    ``image_id, question, question_id``; ``data_subtype``) and, when present,
    ``v2_mscoco_<subtype>_annotations.json`` (``annotations``: ``question_id, answers[10],
    answer_type, question_type, multiple_choice_answer``).  ``path`` is the questions file (the
    annotations file is found by the official naming, or pass ``annotations=``), a directory
    holding both, or LLaVA's ``llava_vqav2_mscoco_test-dev2015.jsonl`` (unscored; upload the
    written ``vqav2_submission.json`` to EvalAI).  Images: ``image_root/COCO_<subtype>_<image_id:012d>.jpg``.  Metric: VQA
    soft accuracy, per answer type.  Without annotations (test-dev) items are unscored.
    """

    name = "vqav2"
    kind = "vqa"
    format_name = "VQAv2 questions JSON"
    main_metric = "vqa_accuracy"
    report_metrics = ("vqa_accuracy",)

    submission_filename = "vqav2_submission.json"

    def load(self, path, image_root=None, annotations: str | os.PathLike | None = None):
        path = Path(path)
        if path.suffix.lower() == ".jsonl":  # LLaVA llava_vqav2_mscoco_test-dev2015.jsonl (no answers)
            root = _default_root(path, image_root)
            items = []
            for i, rec in enumerate(_read_jsonl(path, self.format_name)):
                _require(rec, ("question_id", "image", "text"), path, f"line {i + 1}", self.format_name)
                items.append(EvalItem(str(rec["question_id"]), _with_suffix(str(rec["text"]), SHORT_SUFFIX),
                                      _resolve(str(rec["image"]), root), None, {"answer_type": None}))
            return items
        if path.is_dir():
            found = sorted(path.glob("*questions.json"))
            if not found:
                raise _fail(path, "directory", "no *questions.json file", self.format_name)
            path = found[0]
        data = _read_json(path, self.format_name)
        _require(data, ("questions",), path, "top level", self.format_name)
        subtype = data.get("data_subtype", "val2014")
        ann_path = Path(annotations) if annotations else path.with_name(
            path.name.replace("OpenEnded_", "").replace("_questions", "_annotations"))
        golds = self._annotations(ann_path) if ann_path.is_file() and ann_path != path else {}
        root = _default_root(path, image_root)
        items = []
        for i, q in enumerate(data["questions"]):
            _require(q, ("question_id", "image_id", "question"), path, f"questions[{i}]", self.format_name)
            ann = golds.get(q["question_id"])
            meta = {"answer_type": ann.get("answer_type") if ann else None,
                    "question_type": ann.get("question_type") if ann else None,
                    "image_id": q["image_id"]}
            image = _resolve(f"COCO_{subtype}_{int(q['image_id']):012d}.jpg", root)
            answer = [a["answer"] for a in ann["answers"]] if ann else None
            items.append(EvalItem(str(q["question_id"]), _with_suffix(str(q["question"]), SHORT_SUFFIX),
                                  image, answer, meta))
        return items

    def write_submission(self, items, predictions, path) -> list[str]:
        """EvalAI upload ``[{"question_id": int, "answer": str}]`` with answers normalised by
        :func:`metrics.normalize_vqa_answer` (LLaVA ``convert_vqav2_for_submission.py``).
        Only the questions that were run are written (test-dev, not the padded test set)."""
        rows = []
        for it in items:
            if it.id in predictions:
                qid = int(it.id) if it.id.isdigit() else it.id
                rows.append({"question_id": qid, "answer": M.normalize_vqa_answer(predictions[it.id])})
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f)
        return [str(path)]

    def _annotations(self, path: Path) -> dict:
        data = _read_json(path, "VQAv2 annotations JSON")
        _require(data, ("annotations",), path, "top level", "VQAv2 annotations JSON")
        out = {}
        for i, a in enumerate(data["annotations"]):
            _require(a, ("question_id", "answers"), path, f"annotations[{i}]", "VQAv2 annotations JSON")
            for j, ans in enumerate(a["answers"]):
                _require(ans, ("answer",), path, f"annotations[{i}].answers[{j}]", "VQAv2 annotations JSON")
            out[a["question_id"]] = a
        return out

    def score(self, items, predictions):
        usable, counts = self._split(items, predictions)
        scores = [M.vqa_soft_accuracy(pred, item.answer) for item, pred in usable]
        table = M.grouped_accuracy([item.meta.get("answer_type") for item, _ in usable], scores)
        return {"metrics": {"vqa_accuracy": M.accuracy(scores), **counts}, "tables": {"answer_type": table}}


# --------------------------------------------------------------------------------------
# LLM-judged: MM-Vet, LLaVA-Bench in-the-wild
# --------------------------------------------------------------------------------------
class JudgedSpec(BenchmarkSpec):
    """Benchmarks graded by an LLM elsewhere: here only read questions and write submissions."""

    kind = "judged"
    main_metric = None
    report_metrics = ("n_answered",)

    def score(self, items, predictions):
        answered = sum(1 for it in items if it.id in predictions)
        return {"metrics": {"n_answered": answered, "n_missing": len(items) - answered},
                "tables": {}, "scored": False,
                "note": f"{self.name} is graded by an LLM judge; upload {self.submission_filename}"}


def _file_and_image_root(path, default_name: str, image_root):
    """A release directory or its question file; images default to ``<dir>/images``."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if image_root is None and (path.parent / "images").is_dir():
        image_root = path.parent / "images"
    return path, _default_root(path, image_root)


class MMVetSpec(JudgedSpec):
    """MM-Vet ``mm-vet.json`` (dict ``"v1_0" -> {imagename, question, answer, capability}``,
    images in ``image_root`` or ``<dir>/images``) or LLaVA's ``llava-mm-vet.jsonl``
    (``question_id, image, text``; id ``v1_<question_id>``).  Prompt: the question as is.
    Submission: ``{"v1_0": "answer", ...}`` (LLaVA ``convert_mmvet_for_eval.py``)."""

    name = "mmvet"
    format_name = "MM-Vet JSON"
    submission_filename = "mmvet_submission.json"

    def load(self, path, image_root=None):
        path, root = _file_and_image_root(path, "mm-vet.json", image_root)
        if path.suffix.lower() == ".jsonl":
            items = []
            for i, rec in enumerate(_read_jsonl(path, self.format_name)):
                _require(rec, ("question_id", "image", "text"), path, f"line {i + 1}", self.format_name)
                items.append(EvalItem(f"v1_{rec['question_id']}", str(rec["text"]),
                                      _resolve(str(rec["image"]), root), None, {"capability": None}))
            return items
        data = _read_json(path, self.format_name)
        if not isinstance(data, dict):
            raise _fail(path, "top level", "expected a dict 'v1_N' -> question", self.format_name)
        items = []
        for key, q in data.items():
            _require(q, ("imagename", "question"), path, f"entry '{key}'", self.format_name)
            meta = {"capability": q.get("capability")}
            items.append(EvalItem(str(key), str(q["question"]), _resolve(str(q["imagename"]), root),
                                  q.get("answer"), meta))
        return items

    def write_submission(self, items, predictions, path) -> list[str]:
        result = {it.id: predictions[it.id] for it in items if it.id in predictions}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
        return [str(path)]


class LlavaWildSpec(JudgedSpec):
    """LLaVA-Bench (In-the-Wild) ``questions.jsonl`` (``question_id, image, text, category``),
    images in ``image_root`` or ``<dir>/images``; gold answers (``answers_gpt4.jsonl``) are read
    by the judge, not here.  Prompt: the question as is.  Submission: answer JSONL with
    ``question_id, prompt, text, answer_id, model_id, metadata`` (LLaVA ``model_vqa.py``)."""

    name = "llava-wild"
    format_name = "LLaVA-Bench questions JSONL"
    submission_filename = "llava_wild_answers.jsonl"
    model_id = "victor"

    def load(self, path, image_root=None):
        path, root = _file_and_image_root(path, "questions.jsonl", image_root)
        items = []
        for i, rec in enumerate(_read_jsonl(path, self.format_name)):
            _require(rec, ("question_id", "image", "text"), path, f"line {i + 1}", self.format_name)
            meta = {"category": rec.get("category"), "question_id": rec["question_id"]}
            items.append(EvalItem(str(rec["question_id"]), str(rec["text"]),
                                  _resolve(str(rec["image"]), root), None, meta))
        return items

    def write_submission(self, items, predictions, path, model_id: str | None = None) -> list[str]:
        with open(path, "w", encoding="utf-8") as f:
            for it in items:
                if it.id not in predictions:
                    continue
                f.write(json.dumps({"question_id": it.meta["question_id"], "prompt": it.prompt,
                                    "text": predictions[it.id], "answer_id": uuid.uuid4().hex,
                                    "model_id": model_id or self.model_id, "metadata": {}},
                                   ensure_ascii=False) + "\n")
        return [str(path)]


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "mmbench": MMBenchSpec(),
    "mmbench-circular": MMBenchSpec(circular=True, name="mmbench-circular"),
    "seed": SeedSpec(),
    "mmstar": MMStarSpec(),
    "realworldqa": RealWorldQASpec(),
    "scienceqa": ScienceQASpec(),
    "pope": PopeSpec(),
    "gqa": GQASpec(),
    "vqav2": VQAv2Spec(),
    "mmvet": MMVetSpec(),
    "llava-wild": LlavaWildSpec(),
}


def get_benchmark(name: str) -> BenchmarkSpec:
    """Look a benchmark up by name (``_`` and ``-`` are interchangeable, case-insensitive)."""
    key = name.strip().lower().replace("_", "-")
    if key not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[key]


def public_meta(item: EvalItem) -> dict:
    """The JSON-friendly part of ``item.meta`` (keys not starting with ``_``)."""
    return _public_meta(item.meta)

