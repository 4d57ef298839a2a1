"""Yes/no benchmarks: POPE."""
from __future__ import annotations

from pathlib import Path

from .files import format_error, iter_jsonl, require, resolve
from .metrics import accuracy, binary_metrics, pope_yes_no
from .prompts import SHORT_ANSWER_SUFFIX, with_suffix
from .spec import BenchmarkSpec, EvalItem

__all__ = ["PopeSpec"]


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
                raise format_error(path, "directory", "no coco_pope_*.json files", self.format_name)
        else:
            files = [path]
        root = Path(image_root) if image_root is not None else None
        items = []
        for file in files:
            default_category = file.stem[len("coco_pope_"):] if file.stem.startswith("coco_pope_") else file.stem
            for lineno, rec in iter_jsonl(file, self.format_name):
                where = f"line {lineno}"
                require(rec, ("question_id", "image", "text"), file, where, self.format_name)
                category = str(rec.get("category") or default_category)
                label = rec.get("label")
                if label is not None and str(label).strip().lower() not in ("yes", "no"):
                    raise format_error(file, where, f"field 'label' must be yes/no, got {label!r}", self.format_name)
                items.append(EvalItem(
                    f"{category}/{rec['question_id']}", with_suffix(str(rec["text"]), SHORT_ANSWER_SUFFIX),
                    resolve(str(rec["image"]), root if root is not None else file.parent),
                    None if label is None else str(label).strip().lower(),
                    {"category": category, "question_id": rec["question_id"]}))
        return items

    def score(self, items, predictions):
        usable, counts = self._split(items, predictions)
        preds = [pope_yes_no(pred) for _, pred in usable]
        golds = [item.answer for item, _ in usable]
        overall = binary_metrics(preds, golds)
        by_cat: dict[str, tuple[list, list]] = {}
        for (item, _), p, g in zip(usable, preds, golds):
            by_cat.setdefault(item.meta["category"], ([], []))
            by_cat[item.meta["category"]][0].append(p)
            by_cat[item.meta["category"]][1].append(g)
        table = {c: binary_metrics(p, g) for c, (p, g) in sorted(by_cat.items())}
        metrics = {k: overall[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")}
        metrics["f1_category_mean"] = accuracy(t["f1"] for t in table.values())
        metrics.update(counts)
        return {"metrics": metrics, "tables": {"category": table}}
