"""MMBench and MMBench-CN: the TSV reader, circular copies, CircularEval scoring and the submission file."""
from __future__ import annotations

import csv
from pathlib import Path

from .files import format_error, is_missing, open_base64, read_delimited, text_or_empty
from .metrics import circular_accuracy, circular_groups
from .multiple_choice import MultipleChoiceSpec
from .prompts import (
    CIRCULAR_OFFSET,
    MC_SUFFIX,
    OPTION_LETTERS,
    circular_copy,
    format_mc_prompt,
)
from .spec import EvalItem

__all__ = ["MMBenchSpec"]


class MMBenchSpec(MultipleChoiceSpec):
    """MMBench TSV (OpenCompass / VLMEvalKit release, e.g. ``mmbench_dev_20230712.tsv``).

    Columns: ``index, question, hint, A, B, C, D, answer, category, l2-category, image``
    (+ optional ``source, split, comment``).  ``answer`` is absent in test splits; empty
    option cells end the option list (LLaVA ``get_options``); ``image`` is base64, or, in
    VLMEvalKit releases, the ``index`` of another row whose image is reused (<= 64 chars).
    Circular copies (VLMEvalKit) are rows ``index + k * CIRCULAR_OFFSET`` with rotated options.
    With ``circular=True`` the reader creates those copies itself when the file has none,
    rotating options as LLaVA ``model_vqa_mmbench.py --all-rounds`` does.
    """

    name = "mmbench"
    format_name = "MMBench TSV"
    group_keys = ("category", "l2-category")
    main_metric = "circular_accuracy"
    report_metrics = ("circular_accuracy", "accuracy")
    submission_filename = "submission.tsv"

    def __init__(self, circular: bool = False, name: str | None = None, suffix: str = MC_SUFFIX):
        self.circular = circular
        self.suffix = suffix  # MMBench-CN: LLaVA's Chinese instruction (prompts.MC_SUFFIX_CN)
        if name:
            self.name = name

    def load(self, path, image_root=None):
        path = Path(path)
        rows = read_delimited(path, self.format_name, required=("index", "question", "A", "B", "image"))
        images = self._image_map(rows, path)
        items = []
        for i, row in enumerate(rows):
            items.append(self._item(row, images, path, f"row {i + 1} (index {row['index']})"))
        if self.circular and all(int(it.meta["index"]) < CIRCULAR_OFFSET for it in items):
            items = [copy for it in items for copy in self._rotations(it)]
        return items

    def _image_map(self, rows, path):
        raw = {str(r["index"]).strip(): r["image"] for r in rows}
        images, cache = {}, {}
        for i, row in enumerate(rows):
            key, value = str(row["index"]).strip(), str(row["image"]).strip()
            if len(value) <= 64:  # VLMEvalKit: a short cell names the row holding the image
                if value not in raw or len(str(raw[value]).strip()) <= 64:
                    raise format_error(path, f"row {i + 1} (index {key})",
                                       f"field 'image' neither base64 nor the index of a row with an image: {value!r}",
                                       self.format_name)
                value = str(raw[value]).strip()
            if value not in cache:
                cache[value] = open_base64(value, path, f"row {i + 1} (index {key})", self.format_name)
            images[key] = cache[value]
        return images

    def _item(self, row, images, path, where):
        try:
            index = int(float(row["index"]))
        except ValueError:
            raise format_error(path, where, f"field 'index' is not an integer: {row['index']!r}",
                               self.format_name) from None
        options = {}
        for letter in OPTION_LETTERS:
            if letter not in row or is_missing(row[letter]):
                break
            options[letter] = str(row[letter])
        hint = None if is_missing(row.get("hint")) else str(row["hint"])
        answer = None if is_missing(row.get("answer")) else str(row["answer"]).strip()
        meta = {
            "index": index,
            "category": text_or_empty(row.get("category")) or None,
            "l2-category": text_or_empty(row.get("l2-category", row.get("l2_category"))) or None,
            "options": options,
            "split": text_or_empty(row.get("split")) or None,
            "source": text_or_empty(row.get("source")) or None,
            "hint": hint,
            "question": str(row["question"]),
            "_row": {k: v for k, v in row.items() if k != "image"},
        }
        return EvalItem(str(index), format_mc_prompt(str(row["question"]), options, hint, self.suffix),
                        images[str(row["index"]).strip()], answer, meta)

    def _rotations(self, item: EvalItem) -> list[EvalItem]:
        """The item and its circular copies k = 1 .. n-1 (see :func:`prompts.circular_copy`)."""
        out = [item]
        for k in range(1, len(item.meta["options"])):
            options, answer = circular_copy(item.meta["options"], item.answer, k)
            index = item.meta["index"] + k * CIRCULAR_OFFSET
            meta = {**item.meta, "index": index, "options": options, "circular_copy": k}
            meta.pop("_row", None)
            prompt = format_mc_prompt(item.meta["question"], options, item.meta["hint"], self.suffix)
            out.append(EvalItem(str(index), prompt, item.image, answer, meta))
        return out

    def score(self, items, predictions):
        result = super().score(items, predictions)
        usable, _ = self._split(items, predictions)
        rows = [(item.meta["index"], self.judge(item, pred)[1]) for item, pred in usable]
        result["metrics"]["circular_accuracy"] = circular_accuracy(rows)
        result["metrics"]["n_questions"] = len(circular_groups(rows))
        for key in self.group_keys:
            groups = {}
            for (item, _), row in zip(usable, rows):
                groups.setdefault(item.meta.get(key) or "unknown", []).append(row)
            for group, group_rows in groups.items():
                entry = result["tables"][key][str(group)]
                entry["circular_accuracy"] = circular_accuracy(group_rows)
                entry["n_questions"] = len(circular_groups(group_rows))
        return result

    def write_submission(self, items, predictions, path) -> list[str]:
        """TSV (+ ``.xlsx`` if openpyxl is importable) of the file's own rows: original
        columns without ``image`` and a ``prediction`` column after the options, as LLaVA
        ``convert_mmbench_for_submission.py`` prepares uploads.  Returns the written paths."""
        rows = [it for it in items if "_row" in it.meta]
        if not rows:
            return []
        header = list(rows[0].meta["_row"])
        last_option = max((header.index(c) for c in OPTION_LETTERS if c in header), default=len(header) - 1)
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
            import openpyxl  # optional dependency
        except ImportError:
            return written
        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(header)
        for r in table:
            sheet.append(r)
        book.save(path.with_suffix(".xlsx"))
        return written + [str(path.with_suffix(".xlsx"))]
