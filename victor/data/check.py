"""`victor data check`: validate a whole dataset before a long run, with training's own code.

Every record of every source (LLaVA JSON/JSONL, Hugging Face datasets, shards, parquet
streams, each source of a mixture once) goes through the dataset's `[i]` (parsing, every
field's type, turn order, image markers, image loading and conversion) and, when a processor directory is given (a previous
stage's output or any saved LlavaProcessor), through `LlavaCollator.try_encode` (template,
`max_length`, answers) and the collator's per-sample image processing: what the check
accepts, training accepts. Index ranges are checked in parallel (`workers` spawned
processes, each reading the data files itself) under a progress bar. The report counts
samples by reason, with the first few records of each, and passes if the skipped fraction is
at most `max_skip_fraction`; `victor data check` exits 1 otherwise.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from victor.data.images import MAX_IMAGE_PIXELS
from victor.data.llava import Sample
from victor.data.skips import KEPT, Skipped

log = logging.getLogger(__name__)
_STATE: dict = {}  # per process: the dataset and collator a worker checks with


@dataclass
class CheckOptions:
    data: list[str]
    image_root: str | None = None
    processor: str | None = None  # a directory with a saved LlavaProcessor (and usually config.json)
    template: str = "chat"
    max_length: int = 2048
    max_image_pixels: int | None = MAX_IMAGE_PIXELS
    examples: int = 5  # records listed per reason


def image_seq_length(processor, directory: str) -> int:
    """The model config's count if the directory has one (what training uses), else what the
    processor expands one `<image>` to."""
    config = Path(directory) / "config.json"
    if config.is_file():
        count = json.loads(config.read_text()).get("image_seq_length")
        if count:
            return int(count)
    ids = processor(text=processor.image_token, images=Image.new("RGB", (64, 64)))["input_ids"][0]
    return sum(int(t) == processor.image_token_id for t in ids)


def build(options: CheckOptions) -> dict:
    """The dataset and (with a processor) the collator, quiet: the report lists the records."""
    dataset = open_all(options)
    dataset.skips.logger = None
    collator = None
    if options.processor:
        from transformers import AutoProcessor

        from victor.data.collate import LlavaCollator

        processor = AutoProcessor.from_pretrained(options.processor)
        collator = LlavaCollator(processor, image_seq_length(processor, options.processor), options.template,
                                 options.max_length)
        collator.skips.logger = None
    return {"dataset": dataset, "collator": collator, "examples": options.examples}


def open_all(options: CheckOptions):
    """Every record of every source once, whatever the kind (LLaVA JSON/JSONL, Hugging Face
    datasets, shards, parquet streams, the sources of a mixture YAML, weights and sampling
    strategies set aside): one dataset read by position."""
    import dataclasses

    from victor.data.sources import build_dataset, data_specs

    spec = data_specs(",".join(options.data), options.image_root)
    spec = dataclasses.replace(spec, samples=None, sources=[
        dataclasses.replace(s, weight=None, sampling_strategy="all") for s in spec.sources])
    return build_dataset(spec, options.max_image_pixels)


def size_of(dataset) -> int:
    """Records of a dataset; a stream's `len()` is one rank's share, `samples` all of them."""
    return getattr(dataset, "samples", None) or len(dataset)


def _init_worker(options: CheckOptions) -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    _STATE.update(build(options))


def check_range(start: int, stop: int, state: dict | None = None) -> dict:
    """Counts by reason and the first examples of each, for records [start, stop)."""
    state = state or _STATE
    dataset, collator = state["dataset"], state["collator"]
    counts: Counter = Counter()
    examples: dict[str, list[dict]] = {}
    for index in range(start, stop):
        for event in check_one(dataset, collator, index):
            counts[event.reason] += 1
            found = examples.setdefault(event.reason, [])
            if len(found) < state["examples"]:
                found.append({"where": event.where, "id": event.record_id, "field": event.field,
                              "detail": event.detail})
    return {"start": start, "samples": stop - start, "counts": counts, "examples": examples}


def check_one(dataset, collator, index: int) -> list[Skipped]:
    """What training does with record `index`: [its skip], [its truncation], or []."""
    item = dataset[index]
    if not isinstance(item, Sample) or collator is None:
        return [item] if isinstance(item, Skipped) else []
    encoded = collator.try_encode(item)
    if isinstance(encoded, Skipped):
        return [encoded]
    _, _, dropped = collator.pixel_values([encoded])
    return [e for e in [encoded["truncation"]] if e is not None] + dropped


def check_dataset(options: CheckOptions, workers: int = 1, max_skip_fraction: float = 0.1,
                  progress: bool = True) -> dict:
    """Check every record of every source; -> the report (a JSON-ready dict). Raises DataFormatError
    for a file that is not LLaVA data, ConfigError for a broken mixture, FileNotFoundError for a
    missing image root or processor."""
    if not 0.0 <= max_skip_fraction <= 1.0:
        raise ValueError(f"max_skip_fraction={max_skip_fraction} must be in [0, 1]")
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    for name in ("image_root", "processor"):
        value = getattr(options, name)
        if value and not Path(value).is_dir():
            raise FileNotFoundError(f"{name.replace('_', '-')} {value}: no such directory")
    state = build(options)  # reads the files: format errors surface here, before any worker starts
    total = size_of(state["dataset"])
    chunk = max(1, min(1000, math.ceil(total / max(1, workers * 8))))
    ranges = [(a, min(a + chunk, total)) for a in range(0, total, chunk)]
    results = []
    with tqdm(total=total, unit="record", desc="checking", disable=not progress) as bar:
        if workers <= 1:
            for a, b in ranges:
                results.append(check_range(a, b, state))
                bar.update(b - a)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(options,)) as pool:
                for future in as_completed([pool.submit(check_range, a, b) for a, b in ranges]):
                    results.append(future.result())
                    bar.update(results[-1]["samples"])
    return make_report(options, results, total, max_skip_fraction)


def make_report(options: CheckOptions, results: list[dict], total: int, max_skip_fraction: float) -> dict:
    counts: Counter = Counter()
    examples: dict[str, list[dict]] = {}
    for result in sorted(results, key=lambda r: r["start"]):  # the first records of each reason, in order
        counts.update(result["counts"])
        for reason, found in result["examples"].items():
            examples.setdefault(reason, []).extend(found)
    skipped = sum(n for reason, n in counts.items() if reason not in KEPT)
    fraction = skipped / total if total else 0.0
    return {
        "options": asdict(options),
        "records": total,
        "usable": total - skipped,
        "skipped": skipped,
        "skip_fraction": fraction,
        "max_skip_fraction": max_skip_fraction,
        "passed": fraction <= max_skip_fraction,
        "counts": dict(counts.most_common()),
        "examples": {reason: found[: options.examples] for reason, found in examples.items()},
        "encoded": options.processor is not None,
    }


def format_report(report: dict) -> str:
    """A few lines for the terminal: the totals, then one line per reason with its first records."""
    options = report["options"]
    lines = [f"checked {report['records']} records of {', '.join(options['data'])}"
             + (f" (images in {options['image_root']})" if options["image_root"] else "")
             + ("" if report["encoded"] else "; no --processor: templates and lengths not checked")]
    lines.append(f"  usable {report['usable']}, skipped {report['skipped']} ({report['skip_fraction']:.2%})")
    width = max([len(r) for r in report["counts"]] + [6])
    for reason, n in report["counts"].items():
        first = ", ".join(f"{e['where']}" + (f" (id {e['id']!r})" if e["id"] is not None else "")
                          for e in report["examples"].get(reason, [])[:3])
        kept = " (kept)" if reason in KEPT else ""
        lines.append(f"  {reason:<{width}} {n:>8}{kept}  {first}")
        example = (report["examples"].get(reason) or [None])[0]
        if example:
            lines.append(f"  {'':<{width}} {'':>8}  e.g. {example['field']}: {example['detail']}")
    verdict = "passed" if report["passed"] else "FAILED"
    lines.append(f"{verdict}: {report['skip_fraction']:.2%} skipped, max_skip_fraction {report['max_skip_fraction']:.2%}")
    return "\n".join(line for line in lines if line)


def write_report(report: dict, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))

