"""A published results table as one command: run its benchmarks from one data folder, print our row
beside the published rows.

`llava-1.5` is the Model Zoo row of LLaVA-1.5 and of Croc / ViCToR-7B: nine benchmarks read
from a folder laid out as LLaVA's `playground/data/eval` (docs/evaluation.md: the layout and
where each official file comes from). Each benchmark runs through `run_benchmark` (resumable,
its own directory with predictions, summary and the official submission file); the suite
writes `suite_summary.json` beside them. A column is a score (in %), `judge` (MM-Vet, LLaVA-W:
the submission file is written, a GPT-4 judge scores it), `upload` (no answers in the data,
e.g. VQAv2 test-dev: the submission file goes to the official server) or `missing` (no file).
Published numbers live in `published.json`, each row with its source.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .registry import get_benchmark
from .run import _align, run_benchmark

__all__ = ["SUITES", "SuiteEntry", "format_layout", "format_suite", "locate", "published", "run_suite"]

PUBLISHED = Path(__file__).with_name("published.json")
SUMMARY = "suite_summary.json"


@dataclass(frozen=True)
class SuiteEntry:
    column: str  # the published table's column
    benchmark: str  # registry name
    files: tuple[tuple[str, str | None], ...]  # (data, image root) under the data root; first found wins
    metric: str | None  # the summary metric that is the column's number; None: judged elsewhere
    max_new_tokens: int  # LLaVA's eval scripts: 128 for short answers and letters, 1024 for free text
    official: str  # how the published number was obtained


LLAVA_15 = (
    SuiteEntry("MMBench", "mmbench", (("mmbench/mmbench_dev_20230712.tsv", None), ("mmbench/mmbench_dev_en_*.tsv", None)),
               "circular_accuracy", 128, "dev split, CircularEval on the OpenCompass server"),
    SuiteEntry("MMBench-CN", "mmbench-cn", (("mmbench_cn/mmbench_dev_cn_20231003.tsv", None),
                                            ("mmbench/mmbench_dev_cn_20231003.tsv", None),
                                            ("mmbench_cn/mmbench_dev_cn_*.tsv", None)),
               "circular_accuracy", 128, "dev split, CircularEval on the OpenCompass server"),
    SuiteEntry("SEED", "seed", (("seed_bench/llava-seed-bench.jsonl", "seed_bench"),
                                ("seed_bench/SEED-Bench.json", "seed_bench/SEED-Bench-image")),
               "accuracy", 128, "all questions, video ones on their middle frame (LLaVA's llava-seed-bench.jsonl)"),
    SuiteEntry("MM-Vet", "mmvet", (("mm-vet/llava-mm-vet.jsonl", "mm-vet/images"), ("mmvet/llava-mm-vet.jsonl", "mmvet/images"),
                                   ("mm-vet/mm-vet.json", "mm-vet/images"), ("mmvet/mm-vet.json", "mmvet/images")),
               None, 1024, "GPT-4 judge (MM-Vet's evaluator)"),
    SuiteEntry("SQA-image", "scienceqa", (("scienceqa/llava_test_CQM-A.json", "scienceqa/images/test"),),
               "accuracy", 128, "ScienceQA test questions with an image"),
    SuiteEntry("VQAv2", "vqav2", (("vqav2/llava_vqav2_mscoco_test-dev2015.jsonl", "vqav2/test2015"),),
               "vqa_accuracy", 128, "test-dev, scored by the EvalAI server"),
    SuiteEntry("POPE", "pope", (("pope/coco", "pope/val2014"),),
               "f1_category_mean", 128, "F1, mean over the random / popular / adversarial splits"),
    SuiteEntry("GQA", "gqa", (("gqa/data/testdev_balanced_questions.json", "gqa/data/images"),
                              ("gqa/llava_gqa_testdev_balanced.jsonl", "gqa/data/images")),
               "accuracy", 128, "testdev-balanced, exact match (GQA's eval.py)"),
    SuiteEntry("LLaVA-W", "llava-wild", (("llava-bench-in-the-wild/questions.jsonl", "llava-bench-in-the-wild/images"),),
               None, 1024, "GPT-4 judge, relative score (LLaVA's eval_gpt_review_bench.py)"),
)
SUITES = {"llava-1.5": LLAVA_15}
WHAT_NEXT = {
    "mmvet": "a GPT-4 judge scores it: MM-Vet's evaluator (github.com/yuweihao/MM-Vet)",
    "llava-wild": "a GPT-4 judge scores it: LLaVA's llava/eval/eval_gpt_review_bench.py with the folder's "
                  "answers_gpt4.jsonl and context.jsonl, then summarize_gpt_review.py",
    "vqav2": "the answers are on the EvalAI server: upload it (eval.ai, VQA challenge, test-dev)",
}


def _suite(name: str) -> tuple[SuiteEntry, ...]:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name]


def locate(entry: SuiteEntry, data_root) -> tuple[Path, Path | None] | None:
    """The first of the entry's candidate (data, image root) pairs present under `data_root`."""
    root = Path(data_root)
    for data, images in entry.files:
        found = sorted(glob.glob(str(root / data)))
        if found:
            return Path(found[0]), (root / images if images else None)
    return None


def published(suite: str) -> dict:
    return json.loads(PUBLISHED.read_text(encoding="utf-8"))[suite]


def run_suite(suite: str, data_root, generate: Callable[[list, list[str], int], list[str]], output_dir,
              batch_size: int = 8, limit: int | None = None, max_new_tokens: int | None = None,
              model: str | None = None, progress: bool = True) -> dict:
    """Run every benchmark of `suite` found under `data_root`; `generate(images, prompts, max_new_tokens)`.

    Returns (and writes to `output_dir/suite_summary.json`) one record per column."""
    output_dir = Path(output_dir)
    columns = {}
    for entry in _suite(suite):
        found = locate(entry, data_root)
        record = {"benchmark": entry.benchmark, "metric": entry.metric, "official": entry.official}
        if found is None:
            columns[entry.column] = {**record, "status": "missing", "value": None,
                                     "expected": [d for d, _ in entry.files]}
            continue
        data, images = found
        tokens = max_new_tokens or entry.max_new_tokens
        summary = run_benchmark(entry.benchmark, data, images,
                                lambda ims, prompts, n=tokens: generate(ims, prompts, n),
                                output_dir / entry.benchmark, batch_size=batch_size, limit=limit, progress=progress)
        metrics = summary["metrics"]
        submission = [str(output_dir / entry.benchmark / p) for p in summary.get("submission", [])]
        if entry.metric is None:
            status, value = "judge", None
        elif not metrics.get("n_scored"):
            status, value = "upload", None
        else:
            status, value = "scored", round(100 * metrics[entry.metric], 2)
        columns[entry.column] = {**record, "status": status, "value": value, "n": summary["n"],
                                 "data": str(data), "images": str(images) if images else None,
                                 "submission": submission}
    result = {"suite": suite, "data_root": str(data_root), "model": model, "limit": limit, "columns": columns,
              "published": published(suite)["rows"]}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / SUMMARY).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def _cell(record: dict) -> str:
    return f"{record['value']:.1f}" if record["status"] == "scored" else {"judge": "judge", "upload": "upload"}.get(
        record["status"], "-")


def _published_rows(suite: str) -> tuple[list[str], list[list[str]], list[str]]:
    table = published(suite)
    rows = [[r["name"]] + [f"{r['scores'][c]:.1f}" if c in r["scores"] else "-" for c in table["columns"]]
            for r in table["rows"]]
    sources = [f"  {r['name']}: {r['source']}" for r in table["rows"]]
    return table["columns"], rows, sources


def format_suite(result: dict) -> str:
    """Our row, the number of questions behind it, the published rows, then what each non-score needs."""
    columns, rows, sources = _published_rows(result["suite"])
    ours = result["columns"]
    label = "ours" + (f" ({Path(result['model']).name})" if result.get("model") else "")
    table = [["", *columns], [label, *(_cell(ours[c]) for c in columns)],
             ["  questions", *(str(ours[c].get("n", "-")) for c in columns)], *rows]
    lines = [f"{result['suite']} suite: data {result['data_root']}"
             + (f" (first {result['limit']} questions per benchmark)" if result.get("limit") else ""),
             _align(table), ""]
    for column in columns:
        record = ours[column]
        if record["status"] in ("judge", "upload"):
            files = ", ".join(record["submission"]) or "(no submission file)"
            lines.append(f"{column}: {record['status']}: wrote {files}; {WHAT_NEXT.get(record['benchmark'], 'score it with the official tool')}")
        elif record["status"] == "missing":
            lines.append(f"{column}: missing: none of {', '.join(record['expected'])} under the data root")
    lines += ["", "published rows:", *sources, "ours are scored here by rule; the published numbers are:",
              *(f"  {e.column}: {e.official}" for e in _suite(result["suite"]))]
    return "\n".join(lines)


def format_layout(suite: str, data_root) -> str:
    """Without a model: which file each column would read, and the published rows."""
    columns, rows, sources = _published_rows(suite)
    lines = [f"{suite} suite: data root {data_root}"]
    for entry in _suite(suite):
        found = locate(entry, data_root)
        where = (f"{os.path.relpath(found[0], data_root)} (images: "
                 f"{os.path.relpath(found[1], data_root) if found[1] else 'in the file'})" if found
                 else "missing: " + " or ".join(d for d, _ in entry.files))
        lines.append(f"  {entry.column:<11} {get_benchmark(entry.benchmark).name:<11} {where}")
    lines += ["", _align([["", *columns], *rows]), "", *sources]
    return "\n".join(lines)
