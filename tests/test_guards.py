"""Non-finite loss: the step is skipped (weights untouched) and counted; too many in a row stop the run."""
import json

import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

from victor.config import parse_recipe
from victor.train.guards import NonFiniteLossError
from victor.train.run import train_stage
from victor.train.trainer import VictorTrainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    (root / "img").mkdir()
    records = []
    for i in range(16):
        Image.new("RGB", (32, 32), (15 * i, 100, 200)).save(root / "img" / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a blue image ."}]})
    (root / "d.json").write_text(json.dumps(records))
    return root


def recipe(backbones, data, out, steps, max_nonfinite):
    vision, llm = backbones
    return parse_recipe(None, ["--stage", "1", "--vision", vision, "--llm", llm, "--data_path", str(data / "d.json"),
                               "--image_root", str(data / "img"), "--output_dir", str(out), "--max_steps", str(steps),
                               "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--report_to", "none",
                               "--save_strategy", "no", "--use_cpu", "True", "--logging_steps", "1",
                               "--max_nonfinite_steps", str(max_nonfinite)])


class Projector(TrainerCallback):
    def __init__(self):
        self.after_step = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        proj = model.model.multi_modal_projector.linear_1.weight
        self.after_step[state.global_step] = proj.detach().clone()


def poison(monkeypatch, bad_steps):
    original = VictorTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step + 1 in bad_steps else loss

    monkeypatch.setattr(VictorTrainer, "compute_loss", compute_loss)


def test_nonfinite_steps_are_skipped_and_counted(backbones, data, tmp_path, monkeypatch):
    poison(monkeypatch, {2, 3})
    watch = Projector()
    out = train_stage(recipe(backbones, data, tmp_path / "run", steps=5, max_nonfinite=3), callbacks=[watch])
    w = watch.after_step
    assert torch.equal(w[1], w[2]) and torch.equal(w[2], w[3])  # skipped: nothing moved
    assert not torch.equal(w[3], w[4]) and torch.isfinite(w[5]).all()  # training went on, finite
    record = json.loads((tmp_path / "run" / "victor_stage.json").read_text())
    assert out and record["nonfinite_steps_skipped"] == 2
    assert [h["train/nonfinite_steps_skipped"] for h in record["log_history"] if "loss" in h] == [0, 1, 2, 2, 2]


def test_too_many_in_a_row_stop_the_run_naming_the_checkpoint(backbones, data, tmp_path, monkeypatch):
    poison(monkeypatch, set(range(2, 20)))
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps had non-finite gradients.*Resume from"):
        train_stage(recipe(backbones, data, tmp_path / "run", steps=10, max_nonfinite=2))
