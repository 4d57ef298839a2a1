"""`victor bench data memory`: what the data costs in memory per rank, indexed against in-memory.

For each record count a synthetic LLaVA caption file is written (a JSON list; ~110-word
captions, like ShareGPT4V / LLaVA-ReCap: ~0.72 GB per million records), and each loader
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
    def gb(x):
        return f"{x / GB:.2f}"

    head = (f"{'loader':<8}{'records':>9}{'file GB':>9}{'index s':>9}{'index peak':>11}{'load s':>8}"
            f"{'main +RSS':>10}{'peak +RSS':>10}{'worker priv':>12}{'data/rank':>10}{'1st batch s':>12}{'epoch s':>9}")
    lines = [f"data memory per rank, {workers} DataLoader workers (GB; worker priv = mean private memory a worker "
             "adds after an epoch, above a worker that holds no data)", head, "-" * len(head)]
    for r in rows:
        extra = r["worker_extra"]
        index_s = f"{r['index_s']:.1f}" if "index_s" in r else "-"
        index_peak = gb(r["index_peak"]) if "index_peak" in r else "-"
        lines.append(
            f"{r['loader']:<8}{r['records']:>9}{gb(r['file_bytes']):>9}{index_s:>9}{index_peak:>11}"
            f"{r['load_s']:>8.1f}{gb(r['main_rss']):>10}"
            f"{gb(r['main_peak']):>10}{gb(sum(extra) / max(1, len(extra))):>12}{gb(r['per_rank']):>10}"
            f"{r['first_batch_s']:>12.2f}{r['epoch_s']:>9.1f}")
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
    args = p.parse_args(argv)
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
