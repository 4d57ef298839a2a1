"""Run a benchmark resumably, then score it: one runner (`run_scoring`) for every scoring mode.

A scoring mode (`Scoring`) turns a batch of items into prediction records and finished records
into the summary's metrics: `Generation` around a caller-supplied ``generate`` function
(`run_benchmark`), `victor.eval.likelihood.Likelihood` around a ``loglikelihood`` function
(`run_likelihood`). The runner does the rest, the same for both.

Layout of ``output_dir``::

    run_info.json      benchmark name + data path [+ scoring mode] (guards against resuming the wrong run)
    predictions.jsonl  one line per item: id, prompt, prediction, answer, meta (flushed per batch)
    summary.json       benchmark, n, metrics, per-category tables, data path
    <submission file>  official upload format where the benchmark has one (MMBench TSV,
                       SEED JSONL, GQA / VQAv2 JSON, MM-Vet JSON, LLaVA-Bench answers JSONL)

Re-running with the same ``output_dir`` skips ids already in ``predictions.jsonl`` (a
truncated last line left by a crash is dropped), so an interrupted evaluation continues
where it stopped and ends with the same summary as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image
from tqdm import tqdm

from .registry import get_benchmark
from .spec import BenchmarkSpec, EvalItem, public_meta

__all__ = ["Generation", "Scoring", "compare_runs", "format_summary_table", "load_summary", "read_predictions",
           "run_benchmark", "run_scoring"]

GenerateFn = Callable[[list, list[str]], list[str]]
PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
RUN_INFO = "run_info.json"
_COUNT_KEYS = {"n", "tp", "fp", "tn", "fn"}


def read_predictions(path: str | os.PathLike, repair: bool = True) -> dict[str, dict]:
    """Records of ``predictions.jsonl`` keyed by id.

    A last line that is not valid JSON (the process died mid-write) is dropped and, with
    ``repair=True``, cut from the file so later appends start on a clean line.  Invalid
    lines elsewhere mean the file is not ours: ``ValueError``.
    """
    path = Path(path)
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records: dict[str, dict] = {}
    good: list[str] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not line.endswith("\n") or not isinstance(rec, dict) or "id" not in rec:
                raise ValueError("unterminated line or not a prediction record")
        except ValueError:
            if lineno == len(lines):
                break  # truncated tail from an interrupted run
            raise ValueError(f"{path}: line {lineno} is not a JSON record; not a victor predictions file?")
        records[str(rec["id"])] = rec
        good.append(line)
    if repair and len(good) != sum(1 for l in lines if l.strip()):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(good), encoding="utf-8")
        os.replace(tmp, path)
    return records


def _load_image(item: EvalItem):
    """PIL RGB image for an item (paths opened here, lazily, one batch at a time)."""
    if item.image is None:
        return None
    if isinstance(item.image, (str, os.PathLike)):
        try:
            with Image.open(item.image) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"item {item.id}: image not found: {item.image} (check image_root)") from None
    return item.image.convert("RGB")


def _check_run_info(output_dir: Path, spec: BenchmarkSpec, data: Any, scoring: str = "generate") -> None:
    """Record what this directory holds; refuse to resume another benchmark's or scoring's run."""
    info_path = output_dir / RUN_INFO
    info = {"benchmark": spec.name, "data": str(data)} | ({"scoring": scoring} if scoring != "generate" else {})
    if info_path.exists():
        old = json.loads(info_path.read_text(encoding="utf-8"))
        if old.get("benchmark") != spec.name:
            raise ValueError(f"{output_dir} holds a '{old.get('benchmark')}' run; refusing to resume it as '{spec.name}'")
        if old.get("scoring", "generate") != scoring:
            raise ValueError(f"{output_dir} holds a {old.get('scoring', 'generate')}-scored run; "
                             f"refusing to resume it with {scoring} scoring")
    else:
        info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


class Scoring:
    """One scoring mode of the runner: how a batch of items becomes prediction records, and how
    the records of a finished run become the summary's scoring fields.

    `run_scoring` owns everything else (reading the benchmark, `run_info.json`, resuming from
    `predictions.jsonl`, batching, flushing, the summary's header and `summary.json`)."""

    name = "generate"  # recorded in run_info.json (and the summary) unless it is "generate"

    def label(self, spec: BenchmarkSpec) -> str:
        """The progress bar's description."""
        return spec.name

    def check(self, spec: BenchmarkSpec, items: list[EvalItem]) -> None:
        """Refuse a benchmark this mode cannot score, before any prediction is made."""

    def predict(self, spec: BenchmarkSpec, batch: list[EvalItem]) -> list[dict]:
        """One `predictions.jsonl` record (with `id`) per item of `batch`, in order."""
        raise NotImplementedError

    def summarize(self, spec: BenchmarkSpec, items: list[EvalItem], records: dict[str, dict],
                  output_dir: Path) -> dict:
        """The summary's fields after its header (main_metric, metrics, tables, ...) from every
        item's record; may write files beside the predictions (submission files)."""
        raise NotImplementedError


class Generation(Scoring):
    """Generation: ``generate(images, prompts) -> texts``, scored by the benchmark's own ``score``;
    the official submission file is written where the benchmark has one."""

    def __init__(self, generate: GenerateFn):
        self.generate = generate

    def predict(self, spec: BenchmarkSpec, batch: list[EvalItem]) -> list[dict]:
        texts = self.generate([_load_image(it) for it in batch], [it.prompt for it in batch])
        if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) != len(batch):
            raise RuntimeError(f"generate returned {len(texts) if hasattr(texts, '__len__') else texts!r} "
                               f"outputs for a batch of {len(batch)}")
        return [{"id": it.id, "prompt": it.prompt, "prediction": str(text), "answer": it.answer,
                 "meta": public_meta(it)} for it, text in zip(batch, texts)]

    def summarize(self, spec: BenchmarkSpec, items: list[EvalItem], records: dict[str, dict],
                  output_dir: Path) -> dict:
        predictions = {it.id: records[it.id]["prediction"] for it in items}
        result = spec.score(items, predictions)
        fields = {
            "main_metric": spec.main_metric,
            "report_metrics": list(spec.report_metrics),
            "scored": result.get("scored", True),
            "metrics": result["metrics"],
            "tables": result.get("tables", {}),
        }
        if "note" in result:
            fields["note"] = result["note"]
        writer = getattr(spec, "write_submission", None)
        if writer is not None and spec.submission_filename:
            written = writer(items, predictions, output_dir / spec.submission_filename)
            fields["submission"] = [os.path.relpath(p, output_dir) for p in written]
        return fields


def run_scoring(
    name: str,
    data: str | os.PathLike,
    image_root: str | os.PathLike | None,
    scoring: Scoring,
    output_dir: str | os.PathLike,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Score benchmark ``name`` read from ``data`` with ``scoring``; write and return the summary.

    Records are appended to ``output_dir/predictions.jsonl`` after every batch; ids already
    there are skipped (resume).  ``limit`` keeps the first ``limit`` items.
    """
    spec = get_benchmark(name)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_run_info(output_dir, spec, data, scoring.name)

    items = spec.load(data, image_root)
    if limit is not None:
        items = items[: int(limit)]
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{data}: duplicate item ids; cannot store predictions by id")
    scoring.check(spec, items)

    pred_path = output_dir / PREDICTIONS
    done = read_predictions(pred_path)
    todo = [it for it in items if it.id not in done]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=scoring.label(spec),
               disable=not progress, unit="q", dynamic_ncols=True)
    try:
        with open(pred_path, "a", encoding="utf-8") as out:
            for start in range(0, len(todo), max(1, int(batch_size))):
                batch = todo[start : start + batch_size]
                for rec in scoring.predict(spec, batch):
                    out.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                    done[rec["id"]] = rec
                out.flush()
                os.fsync(out.fileno())
                bar.update(len(batch))
    finally:
        bar.close()

    summary = {
        "benchmark": spec.name,
        "kind": spec.kind,
        **({"scoring": scoring.name} if scoring.name != "generate" else {}),
        "data": str(data),
        "image_root": None if image_root is None else str(image_root),
        "n": len(items),
        "limit": limit,
        **scoring.summarize(spec, items, {it.id: done[it.id] for it in items}, output_dir),
    }
    (output_dir / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def run_benchmark(
    name: str,
    data: str | os.PathLike,
    image_root: str | os.PathLike | None,
    generate: GenerateFn,
    output_dir: str | os.PathLike,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate ``generate`` on benchmark ``name`` read from ``data``; return the summary.

    ``generate(images, prompts) -> texts`` receives PIL RGB images (or ``None`` for text-only
    items) and prompts without the ``<image>`` token, and must return one string per prompt.
    Predictions are appended to ``output_dir/predictions.jsonl`` after every batch; ids
    already there are skipped (resume).  ``limit`` keeps the first ``limit`` items.
    """
    return run_scoring(name, data, image_root, Generation(generate), output_dir, batch_size, limit, progress)


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if key in _COUNT_KEYS or key.startswith("n_") or isinstance(value, int):
        return str(int(value))
    if "loglik" in key and isinstance(value, float):  # nats, not a rate
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{100 * value:.2f}"
    return str(value)


def _align(rows: list[list[str]], right_from: int = 1) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i < right_from else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_summary_table(summary: dict) -> str:
    """Human-readable text of a summary: headline metrics (rates in %), then each table."""
    head = f"{summary['benchmark']}  n={summary['n']}  data={summary.get('data')}"
    if not summary.get("scored", True):
        head += "  [NOT SCORED: " + str(summary.get("note", "judged elsewhere")) + "]"
    metrics = summary.get("metrics", {})
    order = [k for k in summary.get("report_metrics", []) if k in metrics]
    order += [k for k in metrics if k not in order]
    parts = [head, _align([["metric", "value"]] + [[k, _fmt(k, metrics[k])] for k in order])]
    for table_name, table in summary.get("tables", {}).items():
        if not table:
            continue
        columns = []
        for entry in table.values():
            columns += [c for c in entry if c not in columns]
        rows = [[table_name] + columns]
        rows += [[str(group)] + [_fmt(c, entry.get(c, "")) if c in entry else "-" for c in columns]
                 for group, entry in table.items()]
        parts.append(_align(rows))
    return "\n\n".join(parts)


def load_summary(path: str | os.PathLike) -> dict:
    """Read a ``summary.json`` given its path or its run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY
    return json.loads(path.read_text(encoding="utf-8"))


def _summaries_of(path: Path) -> list[dict]:
    if path.is_file():
        return [load_summary(path)]
    if (path / SUMMARY).is_file():
        return [load_summary(path)]
    found = sorted(path.rglob(SUMMARY))
    if not found:
        raise FileNotFoundError(f"no {SUMMARY} in {path}")
    return [load_summary(p) for p in found]


def _label(path: Path) -> str:
    return (path.parent.name if path.is_file() else path.name) or str(path)


def compare_runs(paths: list[str | os.PathLike]) -> str:
    """Side-by-side table of the main metrics of several runs (``victor compare A B``).

    Each path is a ``summary.json``, a benchmark output directory, or a run directory whose
    sub-directories hold ``summary.json`` files (one per benchmark).  Rates are shown in %;
    with exactly two runs a ``delta`` column (second minus first, in points) is added.
    """
    paths = [Path(p) for p in paths]
    labels = [_label(p) for p in paths]
    if len(set(labels)) != len(labels):
        labels = [str(p) for p in paths]
    runs = [{s["benchmark"]: s for s in _summaries_of(p)} for p in paths]

    benchmarks: list[str] = []
    for run in runs:
        benchmarks += [b for b in run if b not in benchmarks]
    header = ["benchmark", "metric"] + labels + (["delta"] if len(runs) == 2 else [])
    rows = [header]
    for bench in benchmarks:
        metric_names: list[str] = []
        for run in runs:
            if bench in run:
                names = run[bench].get("report_metrics") or list(run[bench].get("metrics", {}))[:1]
                metric_names += [m for m in names if m not in metric_names]
        for metric in metric_names:
            values = [run.get(bench, {}).get("metrics", {}).get(metric) for run in runs]
            row = [bench, metric] + ["-" if v is None else _fmt(metric, v) for v in values]
            if len(runs) == 2:
                a, b = values
                if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                    scale = 1 if (metric.startswith("n_") or metric in _COUNT_KEYS) else 100
                    if "loglik" in metric:  # nats, not a rate
                        row.append(f"{b - a:+.3f}")
                    else:
                        row.append(f"{scale * (b - a):+.2f}" if scale == 100 else f"{b - a:+d}")
                else:
                    row.append("-")
            rows.append(row)
    return _align(rows, right_from=2)
