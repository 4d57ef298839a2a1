"""Multiple-choice benchmarks: the shared :class:`MultipleChoiceSpec` and the SEED-Bench,
MMStar, RealWorldQA and ScienceQA-IMG readers (MMBench has its own module)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from .files import (
    default_root,
    format_error,
    image_field,
    is_missing,
    read_json,
    read_table,
    require,
    resolve,
    text_or_empty,
)
from .metrics import accuracy, extract_choice, grouped_accuracy, normalize_short_answer
from .prompts import (
    MC_SUFFIX,
    OPTION_LETTERS,
    consecutive_options,
    format_mc_prompt,
    options_from_lines,
    options_from_parens,
    with_suffix,
)
from .spec import BenchmarkSpec, EvalItem

__all__ = ["MMStarSpec", "MultipleChoiceSpec", "RealWorldQASpec", "ScienceQASpec", "SeedSpec"]


class MultipleChoiceSpec(BenchmarkSpec):
    """Letter answers parsed with :func:`metrics.extract_choice`; per-group accuracy tables."""

    kind = "multiple_choice"
    group_keys: tuple[str, ...] = ("category",)
    report_metrics = ("accuracy",)

    def judge(self, item: EvalItem, prediction: str) -> tuple[str | None, bool]:
        choice = extract_choice(prediction, item.meta.get("options", {}))
        return choice, choice is not None and choice == str(item.answer).strip().upper()

    def score(self, items, predictions):
        usable, counts = self._split(items, predictions)
        judged = [self.judge(item, pred) for item, pred in usable]
        correct = [ok for _, ok in judged]
        metrics = {"accuracy": accuracy(correct), **counts,
                   "n_unparsed": sum(1 for choice, _ in judged if choice is None)}
        tables = {}
        for key in self.group_keys:
            tables[key] = grouped_accuracy([item.meta.get(key) for item, _ in usable], correct)
        return {"metrics": metrics, "tables": tables}


class SeedSpec(MultipleChoiceSpec):
    """SEED-Bench ``SEED-Bench.json``: ``{"question_type": {name: id}, "questions": [...]}``.

    Each question has ``question_id, question, choice_a..choice_d, answer, data_id,
    question_type_id, data_type``; only ``data_type == "image"`` questions are kept (SEED-IMG);
    the image is ``image_root/data_id``.  Or LLaVA's ``llava-seed-bench.jsonl``, image and video
    (middle frame) questions, LLaVA-1.5's "SEED" column (see ``_load_llava``).  Scored per
    question type (names from the top-level ``question_type`` mapping) and per data type.
    """

    name = "seed"
    format_name = "SEED-Bench JSON"
    group_keys = ("question_type", "data_type")
    submission_filename = "submission.jsonl"

    def load(self, path, image_root=None):
        path = Path(path)
        if path.suffix.lower() == ".jsonl":
            return self._load_llava(path, image_root)
        data = read_json(path, self.format_name)
        require(data, ("questions",), path, "top level", self.format_name)
        type_names = {str(v): k for k, v in (data.get("question_type") or {}).items()}
        root = default_root(path, image_root)
        items = []
        for i, q in enumerate(data["questions"]):
            where = f"questions[{i}]"
            require(q, ("question_id", "question", "choice_a", "choice_b", "data_id"), path, where, self.format_name)
            if q.get("data_type", "image") != "image":
                continue
            options = {}
            for letter in "ABCD":
                key = f"choice_{letter.lower()}"
                if key not in q or is_missing(q[key]):
                    break
                options[letter] = str(q[key])
            type_id = q.get("question_type_id")
            meta = {"question_type_id": type_id,
                    "question_type": type_names.get(str(type_id), str(type_id)),
                    "options": options, "data_id": q["data_id"], "data_type": "image"}
            answer = None if is_missing(q.get("answer")) else str(q["answer"]).strip()
            items.append(EvalItem(str(q["question_id"]), format_mc_prompt(str(q["question"]), options),
                                  resolve(str(q["data_id"]), root), answer, meta))
        return items

    def _load_llava(self, path: Path, image_root):
        """LLaVA's ``llava-seed-bench.jsonl`` (``question_id, image, text[, category]``; the text holds
        the options and the instruction; video questions point at their middle frame under
        ``SEED-Bench-video-image``), gold answers from ``SEED-Bench.json`` beside it (else unscored).
        Images: ``image_root`` or the file's folder, as LLaVA's ``--image-folder seed_bench``."""
        gold_path = path.with_name("SEED-Bench.json")
        gold, type_names = {}, {}
        if gold_path.is_file():
            data = read_json(gold_path, self.format_name)
            require(data, ("questions",), gold_path, "top level", self.format_name)
            type_names = {str(v): k for k, v in (data.get("question_type") or {}).items()}
            gold = {str(q.get("question_id")): q for q in data["questions"] if isinstance(q, dict)}
        root = default_root(path, image_root)
        items = []
        for i, rec in enumerate(read_table(path, "LLaVA SEED-Bench JSONL")):
            require(rec, ("question_id", "image", "text"), path, f"line {i + 1}", "LLaVA SEED-Bench JSONL")
            qid, text = str(rec["question_id"]), str(rec["text"])
            q = gold.get(qid, {})
            type_id = q.get("question_type_id")
            meta = {"question_type_id": type_id, "options": options_from_lines(text),
                    "question_type": type_names.get(str(type_id), rec.get("category") or str(type_id)),
                    "data_type": q.get("data_type") or ("video" if "video" in str(rec["image"]) else "image")}
            answer = None if is_missing(q.get("answer")) else str(q["answer"]).strip()
            items.append(EvalItem(qid, with_suffix(text, MC_SUFFIX), resolve(str(rec["image"]), root), answer, meta))
        return items

    def write_submission(self, items, predictions, path) -> list[str]:
        """One ``{"question_id", "prediction"}`` line per question, the upload format
        produced by LLaVA ``convert_seed_for_submission.py`` (prediction = parsed letter)."""
        with open(path, "w", encoding="utf-8") as f:
            for it in items:
                if it.id in predictions:
                    choice = extract_choice(predictions[it.id], it.meta["options"]) or predictions[it.id]
                    f.write(json.dumps({"question_id": it.id, "prediction": choice}) + "\n")
        return [str(path)]


def options_from_mmstar(question: str) -> dict[str, str]:
    """MMStar inline options: ``...\\nOptions: A: text, B: text, C: text, D: text``."""
    m = re.search(r"Options:\s*(.*)$", question, re.S)
    if not m:
        return {}
    parts = re.split(r",\s*(?=[B-J]:\s)", m.group(1).strip())
    found = {}
    for part in parts:
        option = re.match(r"([A-J]):\s*(.*)$", part.strip(), re.S)
        if option:
            found[option.group(1)] = option.group(2).strip()
    return consecutive_options(found)


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
        root = default_root(path, image_root)
        items = []
        for i, row in enumerate(read_table(path, self.format_name)):
            where = f"record {i + 1}"
            require(row, ("question", "answer", "image"), path, where, self.format_name)
            question = str(row["question"]).strip()
            options = {letter: str(row[letter]) for letter in "ABCD" if letter in row and not is_missing(row[letter])}
            if options:
                prompt = format_mc_prompt(question, options)
            else:
                options = options_from_mmstar(question)
                prompt = with_suffix(question, MC_SUFFIX)
            meta = {"index": row.get("index", i), "category": text_or_empty(row.get("category")) or None,
                    "l2_category": text_or_empty(row.get("l2_category", row.get("l2-category"))) or None,
                    "options": options}
            answer = None if is_missing(row.get("answer")) else str(row["answer"]).strip()
            image = image_field(row["image"], root, path, where, self.format_name)
            items.append(EvalItem(str(row.get("index", i)), prompt, image, answer, meta))
        return items

    def score(self, items, predictions):
        result = super().score(items, predictions)
        l2 = result["tables"]["l2_category"]
        result["metrics"]["l2_macro_accuracy"] = accuracy(v["accuracy"] for v in l2.values())
        return result


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
        root = default_root(path, image_root)
        items = []
        for i, row in enumerate(read_table(path, self.format_name)):
            where = f"record {i + 1}"
            require(row, ("question", "answer", "image"), path, where, self.format_name)
            question = str(row["question"]).strip()
            options = options_from_lines(question)
            answer = None if is_missing(row.get("answer")) else str(row["answer"]).strip()
            is_mc = bool(options) and answer is not None and answer.upper() in options
            meta = {"options": options, "question_format": "multiple_choice" if is_mc else "open"}
            item_id = str(row.get("index", row.get("id", i)))
            image = image_field(row["image"], root, path, where, self.format_name)
            items.append(EvalItem(item_id, question, image, answer, meta))
        return items

    def judge(self, item, prediction):
        if item.meta["question_format"] == "multiple_choice":
            return super().judge(item, prediction)
        pred = normalize_short_answer(prediction)
        return pred, pred == normalize_short_answer(item.answer)


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
            data = read_json(path, self.format_name)
            if isinstance(data, list):
                return self._load_llava(path, data, image_root)
            return self._load_problems(path, image_root, data)
        return self._load_rows(path, image_root)

    def _load_llava(self, path, data, image_root):
        problems = self._find_problems(path)
        root = default_root(path, image_root)
        items = []
        for i, rec in enumerate(data):
            where = f"record {i} (id {rec.get('id') if isinstance(rec, dict) else '?'})"
            require(rec, ("id", "conversations"), path, where, self.format_name)
            if "image" not in rec:
                continue
            turns = rec["conversations"]
            if not turns or not isinstance(turns[0], dict) or "value" not in turns[0]:
                raise format_error(path, where, "missing field 'conversations[0].value'", self.format_name)
            question = turns[0]["value"].replace("<image>", "").strip()
            options = options_from_lines(question) or options_from_parens(question)
            problem = problems.get(str(rec["id"])) if problems else None
            if problem is not None:
                answer = OPTION_LETTERS[int(problem["answer"])]
                meta = {"subject": problem.get("subject"), "grade": problem.get("grade")}
            else:
                gold = turns[1].get("value", "") if len(turns) > 1 and isinstance(turns[1], dict) else ""
                answer = extract_choice(gold, options) if gold else None
                meta = {"subject": None}
            meta["options"] = options
            items.append(EvalItem(str(rec["id"]), with_suffix(question, MC_SUFFIX),
                                  resolve(str(rec["image"]), root), answer, meta))
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
        data = read_json(path, self.format_name) if data is None else data
        if not isinstance(data, dict):
            raise format_error(path, "top level", "expected a dict of problem id -> problem", self.format_name)
        splits_file = path.parent / "pid_splits.json"
        keep = None
        if splits_file.is_file():
            with open(splits_file, encoding="utf-8") as f:
                keep = set(json.load(f).get("test", []))
        root = default_root(path, image_root)
        items = []
        for pid, problem in data.items():
            if keep is not None and pid not in keep:
                continue
            if keep is None and isinstance(problem, dict) and problem.get("split", "test") != "test":
                continue
            require(problem, ("question", "choices", "answer"), path, f"problem '{pid}'", self.format_name)
            if not problem.get("image"):
                continue
            image = resolve(f"{pid}/{problem['image']}", root)
            items.append(self._build(pid, problem, image))
        return items

    def _load_rows(self, path, image_root):
        root = default_root(path, image_root)
        items = []
        for i, row in enumerate(read_table(path, self.format_name)):
            where = f"record {i + 1}"
            require(row, ("question", "choices", "answer", "image"), path, where, self.format_name)
            image = image_field(row["image"], root, path, where, self.format_name)
            if image is None:
                continue
            choices = row["choices"]
            if isinstance(choices, str):
                try:
                    choices = json.loads(choices)
                except json.JSONDecodeError:
                    raise format_error(path, where, "field 'choices' is not a JSON list", self.format_name) from None
            items.append(self._build(str(row.get("id", i)), {**row, "choices": choices}, image))
        return items

    def _build(self, pid, problem, image):
        options = {OPTION_LETTERS[i]: str(c) for i, c in enumerate(problem["choices"])}
        hint = text_or_empty(problem.get("hint")).strip()
        question = f"Context: {hint}\n{problem['question']}" if hint else str(problem["question"])
        meta = {"subject": problem.get("subject"), "grade": problem.get("grade"), "options": options}
        return EvalItem(str(pid), format_mc_prompt(question, options), image,
                        OPTION_LETTERS[int(problem["answer"])], meta)
