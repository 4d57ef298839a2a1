"""Streaming (victor.data.shards, victor.data.stream): shards written and indexed, split over ranks x
workers with no duplicate, no loss and the same steps everywhere (the remainder is padding, counted
here), resumed exactly, grouped by modality, mixed by weight, checked, and trained on."""
import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from victor.cli import main
from victor.config import DataArguments
from victor.data.check import CheckOptions, check_dataset
from victor.data.llava import Sample
from victor.data.shards import write_shards
from victor.data.skips import Padding, Skipped
from victor.data.sources import make_dataset
from victor.data.split import Reader, rank_share, worker_batches
from victor.data.stream import StreamingDataset
from victor.train.run import train_from_recipe

COLOURS = [(230, 20, 20), (20, 200, 20), (20, 20, 230), (230, 230, 20)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def turn(who, value):
    return {"from": who, "value": value}


def write_source(root, n=23, broken=True):
    """n records, every third text-only; record 4's image is not an image; and (broken) one record
    with unordered turns and one whose image file is missing."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        image = i % 3 != 0
        rec = {"id": f"s{i}", "conversations": [
            turn("human", "<image>\ndescribe the image in detail ." if image else "describe a colour ."),
            turn("gpt", f"the background is {['red', 'green', 'blue', 'yellow'][i % 4]} .")]}
        if image:
            Image.new("RGB", (32, 32), COLOURS[i % 4]).save(root / "img" / f"{i}.png")
            rec["image"] = f"{i}.png"
        records.append(rec)
    (root / "img" / "4.png").write_bytes(b"not a png")
    if broken:
        records.append({"id": "unordered", "conversations": [turn("gpt", "x")]})
        records.append({"id": "lost", "image": "lost.png", "conversations": [turn("human", "<image>"), turn("gpt", "x")]})
    (root / "src.json").write_text(json.dumps(records))
    return root / "src.json"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    write_source(root)
    write_shards(str(root / "src.json"), str(root / "img"), root / "shards", samples_per_shard=5, progress=False)
    return root / "shards"


def ids_of(items):
    return [x.id if isinstance(x, Sample) else x.record_id if isinstance(x, Skipped) else None for x in items]


def test_victor_data_shard_writes_webdataset_tars_and_reports_what_it_left_out(tmp_path, capsys):
    wds = pytest.importorskip("webdataset")
    write_source(tmp_path)
    main(["data", "shard", str(tmp_path / "src.json"), "--image-root", str(tmp_path / "img"), "--output",
          str(tmp_path / "out"), "--samples-per-shard", "10"])
    out = capsys.readouterr().out
    assert "23 of 25 records in 3 shards" in out
    assert "left out 1 [turn_order], e.g. " in out and "(id 'unordered')" in out and "(id 'lost')" in out
    meta = json.loads((tmp_path / "out" / "shards.json").read_text())
    assert [s["samples"] for s in meta["shards"]] == [10, 10, 3] and meta["samples"] == 23
    # plain webdataset reads them: a record and its image bytes per key
    urls = [str(tmp_path / "out" / s["name"]) for s in meta["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 23 and json.loads(samples[1]["json"])["image"] == "img0.png"
    assert samples[1]["img0.png"] == (tmp_path / "img" / "1.png").read_bytes()
    assert json.loads(samples[1]["json"])["victor_where"] == f"{tmp_path / 'src.json'}[1]"
    # an existing set of tars can be indexed again
    shutil.rmtree(tmp_path / "out" / "index")
    main(["data", "shard", "--index", str(tmp_path / "out")])
    assert "indexed 3 shards, 23 samples" in capsys.readouterr().out


def test_split_arithmetic():
    assert [rank_share(23, r, 2) for r in range(2)] == [(0, 12, 12), (12, 11, 12)]
    assert [rank_share(10, r, 4) for r in range(4)] == [(0, 3, 3), (3, 3, 3), (6, 2, 3), (8, 2, 3)]
    assert sum(rank_share(1000003, r, 8)[1] for r in range(8)) == 1000003
    assert list(worker_batches(12, 3, 1, 2)) == [1, 3] and list(worker_batches(12, 3, 0, 2, first=1)) == [1, 3]


def loader_items(dataset, workers, monkeypatch, rank, world, batch=3):
    """What a rank's DataLoader yields, batch by batch (workers fork with this rank's environment)."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    dataset.batch_size = batch
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=list)
    assert len(loader) == -(-len(dataset) // batch)
    return [ids_of(b) for b in loader]


def test_two_ranks_by_two_workers_read_every_sample_once_with_equal_steps(shards, monkeypatch):
    dataset = make_dataset(DataArguments(data_path=str(shards)))
    assert isinstance(dataset, StreamingDataset) and dataset.samples == 23
    dataset.shuffle_block = 4
    per_rank = {rank: loader_items(dataset, 2, monkeypatch, rank, 2) for rank in range(2)}
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]] == [3, 3, 3, 3]  # same steps
    seen = [i for batches in per_rank.values() for b in batches for i in b]
    padding = seen.count(None)
    assert padding == 2 * 12 - 23 == 1  # the remainder: one padding slot, at the end of rank 1
    assert per_rank[1][-1][-1] is None
    real = Counter(i for i in seen if i is not None)
    assert set(real) == {f"s{i}" for i in range(23)} and set(real.values()) == {1}  # no duplicate, none lost
    # the workers change nothing: a rank's sequence is the same with none
    assert per_rank[0] == loader_items(dataset, 0, monkeypatch, 0, 2)
    # a padding slot is dropped by the collator, uncounted as a skip, and reported
    from victor.data.collate import LlavaCollator, pop_batch_stats

    class Tok:
        pad_token_id = 0

    collator = LlavaCollator.__new__(LlavaCollator)
    collator.batch_stats, collator.tokenizer = True, Tok()
    collator.skipped = Counter()
    collator.pixel_values = lambda encoded: (None, encoded, [])
    stats = pop_batch_stats(collator([Padding(), Padding()]))
    assert stats["samples"] == 0 and stats["padding"] == 2 and stats["reasons"] == {}


def test_epochs_reshuffle_and_a_resumed_epoch_continues_the_same_sequence(shards, monkeypatch):
    dataset = make_dataset(DataArguments(data_path=str(shards)))
    dataset.shuffle_block = 6
    first = loader_items(dataset, 2, monkeypatch, 0, 1)
    dataset.set_epoch(1)
    second = loader_items(dataset, 2, monkeypatch, 0, 1)
    assert sorted(map(str, sum(first, []))) == sorted(map(str, sum(second, []))) and first != second
    dataset.set_epoch(0)
    assert loader_items(dataset, 2, monkeypatch, 0, 1) == first  # the same seed and epoch, the same order
    for done in (1, 3, 6):  # what the Trainer's get_resumed_dataloader hook does
        dataset.resume(done)
        dataset.set_epoch(0)
        assert loader_items(dataset, 2, monkeypatch, 0, 1) == first[done:], done
        dataset.set_epoch(1)  # the next epoch starts from its beginning
        assert loader_items(dataset, 2, monkeypatch, 0, 1) == second
        dataset.resume(0)


def test_modality_grouping_within_the_shuffle_block(tmp_path):
    write_source(tmp_path, n=60, broken=False)
    write_shards(str(tmp_path / "src.json"), str(tmp_path / "img"), tmp_path / "sh", samples_per_shard=7,
                 progress=False)
    dataset = make_dataset(DataArguments(data_path=str(tmp_path / "sh"), group_by_modality_length=True))
    dataset.batch_size, dataset.shuffle_block = 4, 20
    lengths = dataset.stored_lengths
    slots = [p for _, p in dataset.slots(0, Reader())]
    assert sorted(slots) == list(range(60))
    batches = [slots[i:i + 4] for i in range(0, 60, 4)]
    mixed = [b for b in batches if len({lengths[p] > 0 for p in b}) > 1]
    assert len(mixed) <= 3  # only where a block's leftovers of the two modalities meet (3 blocks of 20)


def test_streaming_mixture_of_every_kind_follows_the_weights(shards, tmp_path):
    """Shards, a parquet stream, a HF folder and a JSON file mixed 0.6 / 0.25 / 0.1 / 0.05 over 2000 draws."""
    datasets = pytest.importorskip("datasets")
    rows = [{"id": f"p{i}", "image": None, "conversations": [turn("human", "hi"), turn("gpt", "x")]} for i in range(40)]
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "p.parquet"), batch_size=8)
    table.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "j.json").write_text(json.dumps([{"id": f"j{i}", "conversations": [turn("human", "a"), turn("gpt", "b")]}
                                                 for i in range(30)]))
    weights = {"s": 0.6, "p": 0.25, "h": 0.1, "j": 0.05}
    (tmp_path / "mix.yaml").write_text(f"""datasets:
  - path: {shards}
    weight: 0.6
  - path: {tmp_path / 'p.parquet'}
    kind: parquet-stream
    weight: 0.25
  - path: {tmp_path / 'saved'}
    weight: 0.1
  - path: {tmp_path / 'j.json'}
    weight: 0.05
samples: 2000
""")
    dataset = make_dataset(DataArguments(data_path=str(tmp_path / "mix.yaml")))
    assert isinstance(dataset, StreamingDataset) and len(dataset) == 2000
    items = list(dataset)
    source = Counter(("h" if x.id.startswith("p") and "saved" in x.where else x.id[0]) if isinstance(x, Sample)
                     else "s" for x in items)
    for key, w in weights.items():
        assert abs(source[key] / 2000 - w) <= 4 * np.sqrt(w * (1 - w) / 2000), (key, source[key])
    # the shards' rows come in stored order within each pass (sequential reads) before the block shuffle
    assert sorted(dataset.store.counts().values()) == [100, 200, 500, 1200]


def test_data_check_covers_shards_parquet_and_mixtures(shards, tmp_path):
    report = check_dataset(CheckOptions([str(shards)]), progress=False, max_skip_fraction=0.5)
    assert report["records"] == 23 and report["counts"] == {"corrupt_image": 1}
    assert report["examples"]["corrupt_image"][0]["id"] == "s4"
    assert report["examples"]["corrupt_image"][0]["where"].endswith(":000000004")
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_list([{"id": "ok", "conversations": [turn("human", "a"), turn("gpt", "b")]},
                                        {"id": "bad", "conversations": [turn("gpt", "b")]}])
    table.to_parquet(str(tmp_path / "p.parquet"))
    (tmp_path / "mix.yaml").write_text(f"datasets:\n  - path: {shards}\n    weight: 9\n"
                                       f"  - path: {tmp_path / 'p.parquet'}\n    kind: parquet-stream\n    weight: 1\n"
                                       "samples: 5\n")
    report = check_dataset(CheckOptions([str(tmp_path / "mix.yaml")]), progress=False, max_skip_fraction=0.5)
    assert report["records"] == 25 and report["counts"] == {"corrupt_image": 1, "turn_order": 1}  # every record once
    assert report["examples"]["turn_order"][0]["id"] == "bad"


# -- training on a stream ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_setup(backbones, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-train")
    write_source(root, n=21, broken=False)
    (root / "img" / "4.png").unlink()  # a missing image in the source: left out by the writer
    write_shards(str(root / "src.json"), str(root / "img"), root / "shards", samples_per_shard=4, progress=False)
    (root / "odd.json").write_text(json.dumps(json.loads((root / "src.json").read_text())[:20]))
    write_shards(str(root / "odd.json"), str(root / "img"), root / "odd", samples_per_shard=4, progress=False)
    vision, llm = backbones
    train_from_recipe(None, ["--stage", "1", "--vision", vision, "--llm", llm, "--data_path", str(root / "shards"),
                             "--output_dir", str(root / "s1"), "--max_steps", "1", "--per_device_train_batch_size",
                             "4", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True"])
    return root


def stage2(root, out, extra=()):
    return ["--stage", "2", "--init_from", str(root / "s1"), "--data_path", str(root / "shards"), "--output_dir",
            str(out), "--per_device_train_batch_size", "2", "--num_train_epochs", "2", "--learning_rate", "5e-3",
            "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True", "--seed", "0",
            "--warmup_steps", "0", "--disable_tqdm", "True", "--dataloader_num_workers", "2", *extra]


def test_training_on_shards_resumes_exactly(trained_setup, tmp_path):
    """Epochs from the shard index's length (20 samples / 2 = 10 steps each); killed after step 13
    (mid-epoch 2) and resumed, it ends with the same weights as the uninterrupted run."""
    root = trained_setup
    full = tmp_path / "full"
    train_from_recipe(None, stage2(root, full, ["--save_strategy", "steps", "--save_steps", "13"]))
    rec = json.loads((full / "victor_stage.json").read_text())
    assert rec["planned_steps"] == 20 and rec["steps_run"] == 20
    assert rec["skipped_samples"] == {}  # record 4 (its image missing) was left out of the shards
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoint-13", resumed / "checkpoint-13")
    train_from_recipe(None, stage2(root, resumed, ["--resume_from_checkpoint", str(resumed / "checkpoint-13")]))
    assert json.loads((resumed / "victor_stage.json").read_text())["steps_run"] == 7
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_train_an_odd_stream_with_equal_steps(trained_setup, tmp_path):
    """19 samples, batch 3 on 2 ranks: 10 slots per rank (rank 1: 9 samples + 1 padding), 4
    micro-batches each; rank 1's last micro-batch is padding only, so it runs the placeholder
    batch (an empty batch) while rank 0 trains: no hang, the same steps."""
    out = tmp_path / "ddp"
    args = stage2(trained_setup, out)
    args[args.index("--data_path") + 1] = str(trained_setup / "odd")
    args[args.index("--per_device_train_batch_size") + 1] = "3"
    args[args.index("--num_train_epochs") + 1] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "victor.cli", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rec = json.loads((out / "victor_stage.json").read_text())
    assert rec["world_size"] == 2 and rec["planned_steps"] == 4 == rec["steps_run"]
    assert rec["replicas_differ"] == [] and rec["empty_batches"] == 1 and rec["skipped_samples"] == {}
