"""What every benchmark reader returns (:class:`EvalItem`) and implements (:class:`BenchmarkSpec`).

A spec has ``.load(path, image_root) -> list[EvalItem]``, ``.score(items, predictions)`` and
``.kind``; benchmarks with an official upload format also have ``.write_submission``.
``score`` returns ``{"metrics": {...}, "tables": {name: {group: {...}}}}``.  Items without a
prediction are not scored (``n_missing``), items without a gold answer (test splits) neither
(``n_unlabeled``).  All rates are fractions in [0, 1].
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["BenchmarkSpec", "EvalItem", "public_meta"]


@dataclass
class EvalItem:
    """One benchmark question, independent of any model."""

    id: str  # unique per item (MMBench: the row index)
    prompt: str  # full user text without the <image> token
    image: Any  # PIL.Image.Image (decoded base64), a file path (str), or None
    answer: Any  # gold: letter, "yes"/"no", short answer, list of 10 VQA answers, None if unknown
    meta: dict = field(default_factory=dict)  # keys starting with "_" stay out of predictions.jsonl


def public_meta(item: EvalItem) -> dict:
    """The JSON-friendly part of ``item.meta`` (keys not starting with ``_``)."""
    return {k: v for k, v in item.meta.items() if not k.startswith("_")}


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
