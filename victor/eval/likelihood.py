"""Likelihood scoring: benchmarks answered by comparing log-likelihoods, not by generating.

As lmms-eval's loglikelihood tasks and the original SEED-Bench evaluation do, a caller-supplied
``loglikelihood(images, prompts, continuations) -> [(sum log-prob, n tokens, ...), ...]`` is
asked how likely each candidate answer is after the item's prompt:

* multiple choice: every option's letter (``"A"``) and, separately, its text; the prediction is
  the letter with the highest log-likelihood (letters are one token: sum = mean), the
  text prediction the option whose text has the highest *mean* token log-likelihood (so long
  options are not penalised for their length, as SEED-Bench ranks options by mean loss).
  Both are scored by the benchmark's own ``score`` (accuracy, CircularEval, tables);
* yes/no (POPE): ``"yes"`` against ``"no"``; the higher one is the prediction;
* open answers (GQA, VQAv2, open RealWorldQA items): the gold answer's mean token
  log-likelihood (VQAv2: the most frequent of the ten answers), in nats; no prediction;
* open answers with ``choices`` (GQA JSONL records that list them, as the tiny world's
  fine-detail questions do): every choice; the prediction is the choice with the highest mean
  token log-likelihood, scored by the benchmark (exact match), plus the gold answer's mean.

The run is batched and resumable exactly as :func:`victor.eval.run.run_benchmark`: one record
per item in ``predictions.jsonl`` (with every candidate's ``[sum, n tokens]``), appended per
batch, finished ids skipped on a re-run. ``run_info.json`` records ``scoring: likelihood``, so
a generation run's directory is never resumed as a likelihood run, nor the reverse.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Callable

from .run import Scoring, _load_image, run_scoring
from .spec import BenchmarkSpec, EvalItem, public_meta

__all__ = ["Likelihood", "candidates", "run_likelihood"]

LoglikelihoodFn = Callable[[list, list[str], list[str]], list]
GROUP_KEYS = ("category", "question_type", "structural", "semantic", "answer_type", "l2-category", "subject")


def _gold_text(answer) -> str | None:
    if answer is None:
        return None
    if isinstance(answer, (list, tuple)):
        return Counter(str(a) for a in answer).most_common(1)[0][0] if answer else None
    return str(answer)


def candidates(spec: BenchmarkSpec, item: EvalItem) -> dict[str, str]:
    """Candidate name -> continuation text scored for ``item`` (``letter:A``, ``text:A``, ``yes``,
    ``choice:left``, ``gold``)."""
    if spec.kind == "judged":
        raise ValueError(f"{spec.name}: likelihood scoring applies to multiple-choice, yes/no and "
                         "short-answer benchmarks, not to judged ones")
    options = item.meta.get("options") or {}
    if spec.kind == "multiple_choice" and options and item.meta.get("question_format", "multiple_choice") != "open":
        return {**{f"letter:{k}": k for k in options}, **{f"text:{k}": str(v) for k, v in options.items()}}
    if spec.kind == "yes_no":
        return {"yes": "yes", "no": "no"}
    if item.meta.get("choices"):
        return {f"choice:{c}": str(c) for c in item.meta["choices"]}
    gold = _gold_text(item.answer)
    return {"gold": gold} if gold else {}


def decide(item: EvalItem, scores: dict[str, list]) -> dict:
    """Prediction fields of one item's record from its candidates' ``[sum, n]``."""
    if not scores:
        return {"prediction": None}
    if "gold" in scores:
        total, n = scores["gold"][:2]
        return {"prediction": None, "gold_loglik": total / n}
    if "yes" in scores:
        return {"prediction": "yes" if scores["yes"][0] >= scores["no"][0] else "no"}
    choices = {k.split(":", 1)[1]: v[0] / v[1] for k, v in scores.items() if k.startswith("choice:")}
    if choices:
        out = {"prediction": max(choices, key=choices.get)}
        gold = _gold_text(item.answer)
        return out | ({"gold_loglik": choices[gold]} if gold in choices else {})
    letters = {k.split(":", 1)[1]: v for k, v in scores.items() if k.startswith("letter:")}
    texts = {k.split(":", 1)[1]: v for k, v in scores.items() if k.startswith("text:")}
    return {"prediction": max(letters, key=lambda k: letters[k][0]),
            "prediction_text": max(texts, key=lambda k: texts[k][0] / texts[k][1])}


def _loglik_table(items: list[EvalItem], values: dict[str, float]) -> dict[str, dict]:
    tables = {}
    for key in GROUP_KEYS:
        groups: dict[str, list[float]] = {}
        for it in items:
            if it.id in values and it.meta.get(key) is not None:
                groups.setdefault(str(it.meta[key]), []).append(values[it.id])
        if groups:
            tables[key] = {g: {"n": len(v), "gold_mean_loglik": sum(v) / len(v)} for g, v in sorted(groups.items())}
    return tables


def score_records(spec: BenchmarkSpec, items: list[EvalItem], records: dict[str, dict]) -> dict:
    """Summary fields (metrics, tables, option-text metrics) from the likelihood records."""
    predictions = {i: r["prediction"] for i, r in records.items() if r.get("prediction") is not None}
    gold = {i: r["gold_loglik"] for i, r in records.items() if "gold_loglik" in r}
    out: dict = {"metrics": {}, "tables": {}}
    if predictions or spec.kind in ("multiple_choice", "yes_no"):
        result = spec.score(items, predictions)
        out["metrics"], out["tables"] = result["metrics"], result.get("tables", {})
    texts = {i: r["prediction_text"] for i, r in records.items() if r.get("prediction_text") is not None}
    if texts:
        result = spec.score(items, texts)
        out["metrics_option_text"], out["tables_option_text"] = result["metrics"], result.get("tables", {})
    if gold:
        out["metrics"]["gold_mean_loglik"] = sum(gold.values()) / len(gold)
        out["metrics"]["n_gold_scored"] = len(gold)
        out["tables"].update({f"{k} (gold log-lik)": v for k, v in _loglik_table(items, gold).items()})
    return out


def _request_key(item: EvalItem, continuation: str) -> tuple | None:
    """What makes two likelihood requests the same (image file, prompt, continuation); None for an
    in-memory image (MMBench's base64), which is never looked up."""
    if item.image is None:
        return ("", item.prompt, continuation)
    if isinstance(item.image, (str, os.PathLike)):
        return (os.path.abspath(item.image), item.prompt, continuation)
    return None


class Likelihood(Scoring):
    """Likelihood scoring as a mode of the runner: ``batch_size`` items go to ``loglikelihood``
    together (all their candidates in one call); a record keeps every candidate's ``[sum, n]``.

    A request already scored in this run (the same image file, prompt and continuation: POPE's
    three splits share their positive questions) is answered from the first score, not sent again."""

    name = "likelihood"

    def __init__(self, loglikelihood: LoglikelihoodFn):
        self.loglikelihood = loglikelihood
        self.scored: dict[tuple, list] = {}  # (image file, prompt, continuation) -> [sum, n]

    def label(self, spec: BenchmarkSpec) -> str:
        return f"{spec.name} (likelihood)"

    def check(self, spec: BenchmarkSpec, items: list[EvalItem]) -> None:
        for it in items:
            candidates(spec, it)

    def predict(self, spec: BenchmarkSpec, batch: list[EvalItem]) -> list[dict]:
        images, prompts, conts, asked, owners = [], [], [], {}, []
        for it in batch:
            image = None  # opened once per item, if any of its candidates is asked: they share one forward
            for cand, text in candidates(spec, it).items():
                key = _request_key(it, text)
                if key is not None and (key in self.scored or key in asked):
                    owners.append((it.id, cand, key))
                    continue
                if image is None:
                    image = _load_image(it)
                if key is not None:
                    asked[key] = len(conts)
                owners.append((it.id, cand, key if key is not None else len(conts)))
                images.append(image), prompts.append(it.prompt), conts.append(text)
        results = self.loglikelihood(images, prompts, conts) if conts else []
        if len(results) != len(conts):
            raise RuntimeError(f"loglikelihood returned {len(results)} results for {len(conts)} requests")
        results = [[float(r[0]), int(r[1])] for r in results]
        self.scored.update({key: results[k] for key, k in asked.items()})
        scores: dict[str, dict] = {it.id: {} for it in batch}
        for item_id, cand, ref in owners:
            scores[item_id][cand] = list(results[ref] if isinstance(ref, int) else self.scored[ref])
        return [{"id": it.id, "prompt": it.prompt, "answer": it.answer, "meta": public_meta(it),
                 "scoring": "likelihood", "loglik": scores[it.id], **decide(it, scores[it.id])} for it in batch]

    def summarize(self, spec: BenchmarkSpec, items: list[EvalItem], records: dict[str, dict],
                  output_dir: Path) -> dict:
        # a prediction per item (options, yes/no, choices); else gold log-likelihoods
        chosen = spec.kind in ("multiple_choice", "yes_no") or any(r.get("prediction") is not None
                                                                   for r in records.values())
        return {"main_metric": spec.main_metric if chosen else "gold_mean_loglik",
                "report_metrics": list(spec.report_metrics) if chosen else ["gold_mean_loglik"],
                "scored": True, **score_records(spec, items, records)}


def run_likelihood(
    name: str,
    data: str | os.PathLike,
    image_root: str | os.PathLike | None,
    loglikelihood: LoglikelihoodFn,
    output_dir: str | os.PathLike,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Score benchmark ``name`` by likelihood (see the module docstring); return the summary.

    ``batch_size`` items go to ``loglikelihood`` together (all their candidates in one call).
    """
    return run_scoring(name, data, image_root, Likelihood(loglikelihood), output_dir, batch_size, limit, progress)
