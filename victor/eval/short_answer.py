"""Short-answer benchmarks: GQA (exact match) and VQAv2 (VQA soft accuracy)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .files import default_root, format_error, read_json, read_jsonl, require, resolve
from .metrics import (
    accuracy,
    gqa_exact_match,
    grouped_accuracy,
    normalize_gqa_answer,
    normalize_vqa_answer,
    vqa_soft_accuracy,
)
from .prompts import SHORT_ANSWER_SUFFIX, with_suffix
from .spec import BenchmarkSpec, EvalItem

__all__ = ["GQASpec", "VQAv2Spec"]


class GQASpec(BenchmarkSpec):
    """GQA ``testdev_balanced_questions.json`` (dict qid -> ``{imageId, question, answer,
    types: {structural, semantic, detailed}, ...}``; image ``image_root/<imageId>.jpg``) or
    LLaVA's ``llava_gqa_testdev_balanced.jsonl`` (``question_id, image, text`` [+ ``answer``,
    ``category``, ``choices``: answers a likelihood run picks from]).
    Prompt: question + short-answer suffix; metric: exact match after LLaVA's
    ``rstrip('.').lower()``; tables per structural and semantic type."""

    name = "gqa"
    kind = "short_answer"
    format_name = "GQA questions JSON"
    submission_filename = "gqa_predictions.json"

    def load(self, path, image_root=None):
        path = Path(path)
        root = default_root(path, image_root)
        if path.suffix.lower() == ".jsonl":
            items = []
            for i, rec in enumerate(read_jsonl(path, self.format_name)):
                require(rec, ("question_id", "image", "text"), path, f"line {i + 1}", self.format_name)
                meta = {"structural": None, "semantic": None, "category": rec.get("category")}
                if rec.get("choices"):  # answer choices (the tiny world's fine-detail questions), for likelihood
                    meta["choices"] = [str(c) for c in rec["choices"]]
                items.append(EvalItem(str(rec["question_id"]), with_suffix(str(rec["text"]), SHORT_ANSWER_SUFFIX),
                                      resolve(str(rec["image"]), root), rec.get("answer"), meta))
            return items
        data = read_json(path, self.format_name)
        if not isinstance(data, dict):
            raise format_error(path, "top level", "expected a dict of question id -> question", self.format_name)
        items = []
        for qid, q in data.items():
            require(q, ("imageId", "question"), path, f"question '{qid}'", self.format_name)
            types = q.get("types") or {}
            meta = {"structural": types.get("structural"), "semantic": types.get("semantic"),
                    "imageId": q["imageId"]}
            items.append(EvalItem(str(qid), with_suffix(str(q["question"]), SHORT_ANSWER_SUFFIX),
                                  resolve(f"{q['imageId']}.jpg", root), q.get("answer"), meta))
        return items

    def write_submission(self, items, predictions, path) -> list[str]:
        """``[{"questionId", "prediction"}]`` for the official GQA ``eval.py``, predictions
        normalised as LLaVA ``convert_gqa_for_eval.py`` does."""
        rows = [{"questionId": it.id, "prediction": normalize_gqa_answer(predictions[it.id])}
                for it in items if it.id in predictions]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f)
        return [str(path)]

    def score(self, items, predictions):
        usable, counts = self._split(items, predictions)
        correct = [gqa_exact_match(pred, item.answer) for item, pred in usable]
        keys = ("structural", "semantic", "category")
        tables = {key: grouped_accuracy([item.meta.get(key) for item, _ in usable], correct)
                  for key in keys if any(item.meta.get(key) is not None for item, _ in usable)}
        return {"metrics": {"accuracy": accuracy(correct), **counts}, "tables": tables}


class VQAv2Spec(BenchmarkSpec):
    """VQAv2 official JSONs: ``v2_OpenEnded_mscoco_<subtype>_questions.json`` (``questions``:
    ``image_id, question, question_id``; ``data_subtype``) and, when present,
    ``v2_mscoco_<subtype>_annotations.json`` (``annotations``: ``question_id, answers[10],
    answer_type, question_type, multiple_choice_answer``).  ``path`` is the questions file (the
    annotations file is found by the official naming, or pass ``annotations=``), a directory
    holding both, or LLaVA's ``llava_vqav2_mscoco_test-dev2015.jsonl`` (unscored; upload the
    written ``vqav2_submission.json`` to EvalAI).  Images:
    ``image_root/COCO_<subtype>_<image_id:012d>.jpg``.  Metric: VQA soft accuracy, per answer
    type.  Without annotations (test-dev) items are unscored.
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
            root = default_root(path, image_root)
            items = []
            for i, rec in enumerate(read_jsonl(path, self.format_name)):
                require(rec, ("question_id", "image", "text"), path, f"line {i + 1}", self.format_name)
                items.append(EvalItem(str(rec["question_id"]), with_suffix(str(rec["text"]), SHORT_ANSWER_SUFFIX),
                                      resolve(str(rec["image"]), root), None, {"answer_type": None}))
            return items
        if path.is_dir():
            found = sorted(path.glob("*questions.json"))
            if not found:
                raise format_error(path, "directory", "no *questions.json file", self.format_name)
            path = found[0]
        data = read_json(path, self.format_name)
        require(data, ("questions",), path, "top level", self.format_name)
        subtype = data.get("data_subtype", "val2014")
        ann_path = Path(annotations) if annotations else path.with_name(
            path.name.replace("OpenEnded_", "").replace("_questions", "_annotations"))
        golds = self._annotations(ann_path) if ann_path.is_file() and ann_path != path else {}
        root = default_root(path, image_root)
        items = []
        for i, q in enumerate(data["questions"]):
            require(q, ("question_id", "image_id", "question"), path, f"questions[{i}]", self.format_name)
            ann = golds.get(q["question_id"])
            meta = {"answer_type": ann.get("answer_type") if ann else None,
                    "question_type": ann.get("question_type") if ann else None,
                    "image_id": q["image_id"]}
            image = resolve(f"COCO_{subtype}_{int(q['image_id']):012d}.jpg", root)
            answer = [a["answer"] for a in ann["answers"]] if ann else None
            items.append(EvalItem(str(q["question_id"]), with_suffix(str(q["question"]), SHORT_ANSWER_SUFFIX),
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
                rows.append({"question_id": qid, "answer": normalize_vqa_answer(predictions[it.id])})
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f)
        return [str(path)]

    def _annotations(self, path: Path) -> dict:
        fmt = "VQAv2 annotations JSON"
        data = read_json(path, fmt)
        require(data, ("annotations",), path, "top level", fmt)
        out = {}
        for i, a in enumerate(data["annotations"]):
            require(a, ("question_id", "answers"), path, f"annotations[{i}]", fmt)
            for j, ans in enumerate(a["answers"]):
                require(ans, ("answer",), path, f"annotations[{i}].answers[{j}]", fmt)
            out[a["question_id"]] = a
        return out

    def score(self, items, predictions):
        usable, counts = self._split(items, predictions)
        scores = [vqa_soft_accuracy(pred, item.answer) for item, pred in usable]
        table = grouped_accuracy([item.meta.get("answer_type") for item, _ in usable], scores)
        return {"metrics": {"vqa_accuracy": accuracy(scores), **counts}, "tables": {"answer_type": table}}
