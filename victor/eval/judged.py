"""Benchmarks graded by an LLM judge elsewhere (MM-Vet, LLaVA-Bench in-the-wild): read the
questions, write the official submission file, report only how many were answered."""
from __future__ import annotations

import json
import uuid

from .files import (
    file_and_image_root,
    format_error,
    read_json,
    read_jsonl,
    require,
    resolve,
)
from .spec import BenchmarkSpec, EvalItem

__all__ = ["JudgedSpec", "LlavaWildSpec", "MMVetSpec"]


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


class MMVetSpec(JudgedSpec):
    """MM-Vet ``mm-vet.json`` (dict ``"v1_0" -> {imagename, question, answer, capability}``,
    images in ``image_root`` or ``<dir>/images``) or LLaVA's ``llava-mm-vet.jsonl``
    (``question_id, image, text``; id ``v1_<question_id>``).  Prompt: the question as is.
    Submission: ``{"v1_0": "answer", ...}`` (LLaVA ``convert_mmvet_for_eval.py``)."""

    name = "mmvet"
    format_name = "MM-Vet JSON"
    submission_filename = "mmvet_submission.json"

    def load(self, path, image_root=None):
        path, root = file_and_image_root(path, "mm-vet.json", image_root)
        if path.suffix.lower() == ".jsonl":
            items = []
            for i, rec in enumerate(read_jsonl(path, self.format_name)):
                require(rec, ("question_id", "image", "text"), path, f"line {i + 1}", self.format_name)
                items.append(EvalItem(f"v1_{rec['question_id']}", str(rec["text"]),
                                      resolve(str(rec["image"]), root), None, {"capability": None}))
            return items
        data = read_json(path, self.format_name)
        if not isinstance(data, dict):
            raise format_error(path, "top level", "expected a dict 'v1_N' -> question", self.format_name)
        items = []
        for key, q in data.items():
            require(q, ("imagename", "question"), path, f"entry '{key}'", self.format_name)
            meta = {"capability": q.get("capability")}
            items.append(EvalItem(str(key), str(q["question"]), resolve(str(q["imagename"]), root),
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
        path, root = file_and_image_root(path, "questions.jsonl", image_root)
        items = []
        for i, rec in enumerate(read_jsonl(path, self.format_name)):
            require(rec, ("question_id", "image", "text"), path, f"line {i + 1}", self.format_name)
            meta = {"category": rec.get("category"), "question_id": rec["question_id"]}
            items.append(EvalItem(str(rec["question_id"]), str(rec["text"]),
                                  resolve(str(rec["image"]), root), None, meta))
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
