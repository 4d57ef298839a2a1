"""Broken data trained through: no record ends a run, every skip is counted by reason."""
import json
import math

from broken_corpus import KINDS, MAX_LENGTH, write_corpus
import pytest
from PIL import Image

from victor.config import ConfigError
from victor.data.collate import LlavaCollator
from victor.data.llava import LlavaDataset
from victor.data.monitor import SkipMonitor
from victor.train.run import train_from_recipe

GOOD_BETWEEN = 11  # good records after each special one: under 10% of samples are skipped


def good(i):
    return {"id": f"good{i}", "image": f"{i % 4}.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a red image ."}]}


def run_args(backbones, data, images, out, steps, batch=4):
    vision, llm = backbones
    return ["--stage", "1", "--vision", vision, "--llm", llm, "--data_path", str(data), "--image_root", str(images),
            "--output_dir", str(out), "--per_device_train_batch_size", str(batch), "--max_steps", str(steps),
            "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no",
            "--use_cpu", "True", "--seed", "0", "--dataloader_num_workers", "0",
            "--train_sampling_strategy", "sequential"]


def test_a_gpt_only_record_does_not_end_the_run_early(backbones, tmp_path):
    """Issue 11: an image record with only a gpt turn raised StopIteration inside __getitem__; the
    DataLoader took it for the end of the data and the run 'finished' after 1 of 10 steps."""
    images = tmp_path / "img"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (200, 20, 20)).save(images / f"{i}.png")
    records = [good(i) for i in range(10)]
    records[1] = {"id": "gpt-only", "image": "0.png", "conversations": [{"from": "gpt", "value": "a red image ."}]}
    (tmp_path / "d.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    train_from_recipe(None, run_args(backbones, tmp_path / "d.json", images, out, steps=10, batch=2))
    record = json.loads((out / "victor_stage.json").read_text())
    steps = [h["step"] for h in record["log_history"] if "loss" in h]
    assert steps == list(range(1, 11))


def test_the_broken_corpus_trains_through_with_exact_counts(backbones, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", good_between=GOOD_BETWEEN)
    assert KINDS >= 20
    steps = corpus.records // 4
    out = tmp_path / "out"
    args = run_args(backbones, corpus.data, corpus.images, out, steps=steps)
    args[1] = "2"  # stage 2: the chat template, whose lengths broken_corpus.MAX_LENGTH assumes
    train_from_recipe(None, args + ["--max_length", str(MAX_LENGTH), "--logging_steps", str(steps)])
    record = json.loads((out / "victor_stage.json").read_text())
    assert [h["step"] for h in record["log_history"] if "loss" in h] == [steps]
    counts = dict(record["skipped_samples"])
    # 'unreadable' is LlavaCollator.skipped's tally of samples the dataset skipped (all but the
    # collator's own 2 skips); a record written from SkipMonitor.counts() has only the reasons
    assert counts.pop("unreadable", corpus.skipped - 2) == corpus.skipped - 2
    assert counts == dict(corpus.expected)
    # the log entries: total skips, and each reason, incl. both max-length skips and the truncations
    logged = next(h for h in record["log_history"] if "loss" in h)
    assert logged["data/skipped"] == corpus.skipped
    by_reason = {k.split("/", 2)[2]: v for k, v in logged.items() if k.startswith("data/skipped/")}
    assert by_reason == corpus.expected
    assert by_reason["image_beyond_max_length"] == by_reason["answer_beyond_max_length"] == 1
    assert by_reason["truncated_text"] == 1  # kept, cut at max_length, not a skip


def test_the_corpus_through_dataset_collator_and_monitor(tiny_llava, tmp_path):
    """Without the Trainer: the same counts from the batches' statistics, and no empty batch."""
    llava, processor = tiny_llava
    corpus = write_corpus(tmp_path, good_between=3)
    dataset = LlavaDataset(corpus.data, corpus.images)
    collator = LlavaCollator(processor, llava.config.image_seq_length, "chat", MAX_LENGTH, batch_stats=True)
    monitor = SkipMonitor(max_skip_fraction=0.5)
    rows = 0
    for start in range(0, len(dataset), 4):
        batch = collator([dataset[i] for i in range(start, start + 4)])
        assert monitor.observe(batch) and "data_stats" not in batch
        rows += batch["input_ids"].shape[0]
        assert batch["input_ids"].shape[1] <= MAX_LENGTH
    assert monitor.counts() == dict(sorted(corpus.expected.items()))
    assert monitor.samples == corpus.records and rows == corpus.records - corpus.skipped
    assert monitor.skipped() == corpus.skipped and monitor.empty_batches == 0
    assert dict(dataset.skipped) | {"unreadable": 0} == {r: n for r, n in corpus.expected.items()
                                                         if r in dataset.skipped} | {"unreadable": 0}


def test_a_batch_with_no_usable_sample_is_skipped_not_fatal(backbones, tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (200, 20, 20)).save(images / f"{i}.png")
    broken = [{"id": f"missing{i}", "image": f"nope{i}.png", "conversations": good(i)["conversations"]}
              for i in range(4)]
    (tmp_path / "d.json").write_text(json.dumps([good(i) for i in range(4)] + broken + [good(i) for i in range(4)]))
    out = tmp_path / "out"
    # a third of the samples are broken: above the default max_skip_fraction, so the run says so at its end
    with pytest.raises(ConfigError, match="4 of 12 samples .* above max_skip_fraction=0.1.*'missing_image'"):
        train_from_recipe(None, run_args(backbones, tmp_path / "d.json", images, out, steps=3))
    train_from_recipe(None, [*run_args(backbones, tmp_path / "d.json", images, out, steps=3), "--max_skip_fraction", "0.5"])
    record = json.loads((out / "victor_stage.json").read_text())
    losses = [h["loss"] for h in record["log_history"] if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    assert record["skipped_samples"]["missing_image"] == 4
