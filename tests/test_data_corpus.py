"""Broken data trained through: no record ends a run, every skip is counted by reason."""
import json

from PIL import Image

from victor.train.run import train_from_recipe


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
