"""`victor bench data memory | rate`: what the data costs in memory per rank, and how fast it comes.

`memory`: the record index against in-memory records (below). `rate`: samples per second one
DataLoader worker delivers from LLaVA JSON + folder, shards and `datasets` parquet, at 336 px
(CLIP) and 384 px (SigLIP) processing, beside what a training step consumes at the toy and the
realistic shape, so a user sees whether training is input-bound.

For each record count a synthetic LLaVA caption file is written (a JSON list; ~110-word
captions, like ShareGPT4V / LLaVA-ReCap: ~0.85 GB per million records), and each loader
is measured in a fresh process:

* `index`  : `LlavaDataset` over the record index (`victor.data.index`), built beforehand;
  the index build itself is timed in its own fresh process (`index s`, `index peak`);
* `memory` : `LlavaDataset(in_memory=True)`, every record a Python object (the loader
  before the index).

In the measuring process: the resident set before building the dataset (torch and victor
imported), after building it (`main +RSS`) and its peak (`peak +RSS`, from the kernel's
high-water mark); then an epoch over every record by a DataLoader with `--workers` forked
workers, shuffled as the Trainer does, each sample read as `__getitem__` reads it minus the
image decoding (`read_text`); after the epoch, each worker's private memory (USS: pages only
it holds, copy-on-write copies included). A control run (a dataset of the same length that
holds nothing) gives the private memory a worker has anyway; `data/rank` is
`main +RSS` + the workers' private memory above the control's. `1st batch s` is from building
the dataset to the first batch out of the DataLoader.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1 << 30
WORDS_PER_CAPTION = 110


def write_caption_file(path: Path, records: int, seed: int = 0) -> Path:
    """A LLaVA caption file of `records` image records, written streaming (bounded memory)."""
    if path.is_file() and path.with_suffix(".count").is_file() and \
            path.with_suffix(".count").read_text() == str(records):
        return path
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                  for _ in range(5000)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", buffering=1 << 22) as f:
        f.write("[\n")
        for i in range(records):
            caption = " ".join(rng.choices(vocabulary, k=WORDS_PER_CAPTION))
            record = {"id": f"{i:08d}", "image": f"cc3m/{i // 10000:04d}/{i:08d}.jpg",
                      "conversations": [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                                        {"from": "gpt", "value": caption}]}
            f.write(("" if i == 0 else ",\n") + json.dumps(record))
        f.write("\n]\n")
    os.replace(tmp, path)
    path.with_suffix(".count").write_text(str(records))
    return path


# -- measured in a fresh process ----------------------------------------------------------------
def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


class _Text:
    """What a DataLoader worker does with a record, minus decoding its images."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        sample = self.dataset.read_text(i) if self.dataset is not None else None
        return 0 if sample is None else len(sample.messages)


class _Nothing:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return 0


def measure(loader: str, data: str | None, workers: int, batch_size: int, records: int) -> dict:
    """One loader in this (fresh) process: see the module docstring."""
    import psutil
    import torch
    from torch.utils.data import DataLoader

    from victor.data.llava import LlavaDataset

    torch.set_num_threads(1)
    base_rss, base_peak = _rss(), _peak()
    start = time.perf_counter()
    if loader == "control":
        dataset = _Nothing(records)
    else:
        dataset = _Text(LlavaDataset(data, in_memory=(loader == "memory")))
    load_s = time.perf_counter() - start
    after_rss, after_peak = _rss(), _peak()
    dl = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                    generator=torch.Generator().manual_seed(0))
    seen, first = 0, None
    for batch in dl:
        if first is None:
            first = time.perf_counter() - start
        seen += len(batch)
    epoch_s = time.perf_counter() - start - (first or 0)
    children = psutil.Process().children()
    uss = [c.memory_full_info().uss for c in children]
    return {"loader": loader, "records": len(dataset), "read": seen, "load_s": load_s, "first_batch_s": first,
            "epoch_s": epoch_s, "main_rss": after_rss - base_rss, "main_peak": max(0, after_peak - base_rss),
            "base_rss": base_rss, "base_peak": base_peak, "worker_uss": uss, "main_rss_after_epoch": _rss() - base_rss}


def measure_index(data: str) -> dict:
    """Build the index of `data` from scratch in this (fresh) process."""
    import shutil

    from victor.data.index import build_index, candidate_dirs

    directory = candidate_dirs(Path(data))[0]
    shutil.rmtree(directory, ignore_errors=True)
    base = _rss()
    start = time.perf_counter()
    meta = build_index(Path(data), directory)
    return {"index_s": time.perf_counter() - start, "index_peak": max(0, _peak() - base), "records": meta["records"],
            "index_bytes": sum(f.stat().st_size for f in directory.iterdir())}


def in_fresh_process(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "victor.bench.data", "_measure", *args], capture_output=True,
                         text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"measuring {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the table ----------------------------------------------------------------------------------
def run_memory(records: list[int], memory_max: int, workers: int, batch_size: int, root: Path) -> list[dict]:
    rows = []
    controls: dict[int, dict] = {}
    for n in records:
        data = write_caption_file(root / f"captions-{n}.json", n)
        size = data.stat().st_size
        built = in_fresh_process("build", str(data))
        controls[n] = in_fresh_process("control", "-", str(workers), str(batch_size), str(n))
        control_uss = controls[n]["worker_uss"]
        for loader in ("index", "memory"):
            if loader == "memory" and n > memory_max:
                continue
            got = in_fresh_process(loader, str(data), str(workers), str(batch_size), str(n))
            extra = [max(0, u - c) for u, c in zip(sorted(got["worker_uss"]), sorted(control_uss))]
            rows.append({**got, "file_bytes": size, **(built if loader == "index" else {}),
                         "worker_extra": extra, "per_rank": got["main_rss"] + sum(extra),
                         "control_worker_uss": control_uss})
    return rows


def format_memory(rows: list[dict], workers: int) -> str:
    def mb(x):
        return f"{x / (1 << 20):.1f}"

    head = (f"{'loader':<8}{'records':>9}{'file GB':>8}{'index s':>9}{'index MB':>9}{'load s':>7}"
            f"{'main +MB':>9}{'peak +MB':>9}{'worker MB':>10}{'data/rank MB':>13}{'1st batch s':>12}{'epoch s':>8}")
    lines = [f"data memory per rank, {workers} DataLoader workers (MB; index MB = the indexer's peak above its start; "
             "worker MB = mean private memory a worker adds over an epoch, above a worker holding no data)",
             head, "-" * len(head)]
    for r in rows:
        extra = r["worker_extra"]
        index_s = f"{r['index_s']:.1f}" if "index_s" in r else "-"
        index_peak = mb(r["index_peak"]) if "index_peak" in r else "-"
        lines.append(
            f"{r['loader']:<8}{r['records']:>9}{r['file_bytes'] / GB:>8.2f}{index_s:>9}{index_peak:>9}"
            f"{r['load_s']:>7.1f}{mb(r['main_rss']):>9}{mb(r['main_peak']):>9}"
            f"{mb(sum(extra) / max(1, len(extra))):>10}{mb(r['per_rank']):>13}"
            f"{r['first_batch_s']:>12.2f}{r['epoch_s']:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_measure"]:
        kind, data, *rest = argv[1:]
        if kind == "build":
            result = measure_index(data)
        else:
            workers, batch_size, records = map(int, rest)
            result = measure(kind, None if data == "-" else data, workers, batch_size, records)
        print(json.dumps(result))
        return None
    if argv[:1] == ["_format"]:  # a saved --json memory run as its table
        print(format_memory(json.loads(Path(argv[1]).read_text()), int(argv[2]) if len(argv) > 2 else 4))
        return None
    p = argparse.ArgumentParser(prog="victor bench data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("memory", help="data memory per rank: the record index against in-memory records")
    s.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    s.add_argument("--memory-max", type=int, default=1_000_000,
                   help="measure the in-memory loader only up to this many records (3 M needs ~20 GB)")
    s.add_argument("--workers", type=int, default=4)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--dir", help="where the synthetic files go (kept for reruns); default: a temporary folder")
    s.add_argument("--json", help="also write the rows here")
    s = sub.add_parser("rate", help="samples/s per DataLoader worker per source kind at 336 and 384 px, "
                                     "against what a training step consumes")
    s.add_argument("--samples", type=int, default=64)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--dir", help="where the synthetic data goes; default: a temporary folder")
    s.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if args.what == "rate":
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(args.dir or tmp)
            root.mkdir(parents=True, exist_ok=True)
            rates = rate_rows(root, args.samples, args.repeats)
            steps = step_rows(args.repeats)
        print(format_rate(rates, steps))
        if args.json:
            Path(args.json).write_text(json.dumps({"rates": rates, "steps": steps}, indent=1))
        return rates
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = run_memory(args.records, args.memory_max, args.workers, args.batch_size, root)
    print(format_memory(rows, args.workers))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()


# -- data rate (`victor bench data rate`) -------------------------------------------------------
def write_rate_sources(root: Path, n: int, seed: int = 0) -> dict[str, str]:
    """n caption records with 640x480 JPEG photos-like images, as JSON + folder, shards, and parquet."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    words = ["red", "green", "blue", "circle", "square", "top", "left", "the", "a", "of", "is", "image"]
    records = []
    for i in range(n):
        base = np.linspace(0, 255, 640)[None, :, None] * rng.random(3)[None, None, :]
        pixels = np.clip(base + rng.normal(0, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i}.jpg", quality=90)
        records.append({"id": str(i), "image": f"{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image in detail ."},
            {"from": "gpt", "value": " ".join(rng.choice(words, WORDS_PER_CAPTION)) + " ."}]})
    (root / "data.json").write_text(json.dumps(records))
    from victor.data.shards import write_shards

    write_shards(str(root / "data.json"), str(root / "img"), root / "shards", samples_per_shard=256, progress=False)
    sources = {"json + folder": str(root / "data.json"), "shards": str(root / "shards")}
    try:
        import datasets
    except ImportError:
        return sources
    rows = {"id": [r["id"] for r in records], "conversations": [r["conversations"] for r in records],
            "image": [{"bytes": (root / "img" / r["image"]).read_bytes(), "path": r["image"]} for r in records]}
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}]})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "data.parquet"))
    sources["datasets (parquet)"] = str(root / "data.parquet")
    return sources


def _median_time(fn, repeats: int) -> float:
    import statistics

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rate_rows(root: Path, n: int, repeats: int, batch: int = 4) -> list[dict]:
    """Per source kind and image size: seconds per sample to read (decode included) and to collate
    (tokenise, image processing) in one process: one DataLoader worker's rate."""
    import torch

    from victor.data.collate import LlavaCollator
    from victor.config import DataArguments
    from victor.data.sources import make_dataset
    from victor.data.templates import TEMPLATE_TEXT
    from victor.model.assemble import build_model
    from victor.tiny.backbones import save_backbones
    from victor.tiny.world import build_tokenizer

    torch.set_num_threads(1)
    sources = write_rate_sources(root, n)
    rows = []
    for family, px in (("clip", 336), ("siglip", 384)):
        vision, llm = save_backbones(root / f"{family}-{px}", build_tokenizer([TEMPLATE_TEXT]), vision=family,
                                     image_size=px, patch_size=14, vision_hidden=32, vision_layers=1, llm_hidden=64,
                                     llm_layers=1)
        model, processor = build_model(vision, llm, vision_feature_select_strategy="full" if family == "siglip"
                                       else "default", vision_feature_layer=-1)
        collator = LlavaCollator(processor, model.config.image_seq_length, "chat", 4096)
        collator.skips.logger = None
        for kind, path in sources.items():
            dataset = make_dataset(DataArguments(data_path=path, image_root=str(root / "img")))

            def read():
                items = list(dataset) if getattr(dataset, "streaming", False) else [dataset[i] for i in range(n)]
                assert sum(1 for s in items if getattr(s, "images", None)) == n, kind
                return items

            items = read()
            read_s = _median_time(read, repeats) / n
            collate_s = _median_time(lambda: [collator(items[i:i + batch]) for i in range(0, n, batch)], repeats) / n
            rows.append({"source": kind, "px": px, "processor": family, "read_ms": 1000 * read_s,
                         "collate_ms": 1000 * collate_s, "per_worker": 1 / (read_s + collate_s)})
    return rows


def step_rows(repeats: int) -> list[dict]:
    """Samples per second a plain training step (forward, backward, AdamW) consumes, at the toy shape of
    `victor bench step` and at the realistic shape of the performance issue (batch 4, 336 px / patch 14
    = 576 visual tokens, ~700-token sequences, LLM hidden 512 x 8 layers)."""
    import tempfile

    import torch
    from PIL import Image

    from victor.data.collate import LlavaCollator
    from victor.data.llava import Sample
    from victor.data.templates import TEMPLATE_TEXT
    from victor.model.assemble import build_model
    from victor.tiny.backbones import save_backbones
    from victor.tiny.world import build_tokenizer

    torch.set_num_threads(2)
    shapes = [("toy (victor bench step)", dict(image_size=96, patch_size=8, vision_hidden=64, llm_hidden=256,
                                              llm_layers=4), 8, 20),
              ("realistic (issue 26)", dict(image_size=336, patch_size=14, vision_hidden=64, llm_hidden=512,
                                            llm_layers=8), 4, 110)]
    words = [TEMPLATE_TEXT, "describe the image in detail . a red circle is at the top left of the picture ."]
    rows = []
    for name, shape, batch, repeat_text in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            vision, llm = save_backbones(tmp, build_tokenizer(words), **shape)
            model, processor = build_model(vision, llm)
        collator = LlavaCollator(processor, model.config.image_seq_length, "chat", 4096)
        samples = [Sample(str(i), [{"role": "user", "content": "<image>\ndescribe the image in detail ."},
                                   {"role": "assistant", "content": "a red circle is at the top left . " * (repeat_text // 9)}],
                          [Image.effect_noise((shape["image_size"],) * 2, 40 + i).convert("RGB")]) for i in range(batch)]
        inputs = collator(samples)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step():
            optimizer.zero_grad(set_to_none=True)
            model(**inputs).loss.backward()
            optimizer.step()

        seconds = _median_time(step, repeats)
        rows.append({"shape": name, "batch": batch, "tokens": int(inputs["input_ids"].shape[1]),
                     "step_s": seconds, "consumes": batch / seconds})
    return rows


def format_rate(rates: list[dict], steps: list[dict]) -> str:
    lines = ["data rate of one DataLoader worker (one process, 1 thread; medians): read = the dataset's item "
             "(record + image decode), collate = tokenise + image processing",
             f"{'source':<20}{'image':>14}{'read ms':>9}{'collate ms':>11}{'samples/s':>10}", "-" * 64]
    for r in rates:
        lines.append(f"{r['source']:<20}{r['processor'] + ' ' + str(r['px']) + 'px':>14}{r['read_ms']:>9.2f}"
                     f"{r['collate_ms']:>11.2f}{r['per_worker']:>10.1f}")
    lines += ["", "what a training step consumes (plain LLaVA step, forward + backward + AdamW, 2 threads, this CPU), "
                  "and the workers that keep up with it (at the slowest source above):",
              f"{'shape':<26}{'batch':>6}{'tokens':>7}{'step s':>8}{'samples/s':>10}{'workers needed':>16}",
              "-" * 73]
    slowest = min(r["per_worker"] for r in rates) if rates else float("nan")
    for s in steps:
        lines.append(f"{s['shape']:<26}{s['batch']:>6}{s['tokens']:>7}{s['step_s']:>8.3f}{s['consumes']:>10.1f}"
                     f"{s['consumes'] / slowest:>16.2f}")
    lines.append("these steps ran on this CPU; on an accelerator, workers needed per rank = per-device batch / "
                 "step seconds there / the samples/s above (a run with fewer workers is input-bound)")
    return "\n".join(lines)
