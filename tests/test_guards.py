"""Non-finite loss: the step is skipped (weights untouched) and counted; too many in a row stop the run."""
import json
import math
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
from helpers import corpus_dir
from transformers import TrainerCallback

from victor.config import parse_recipe
from victor.train.guards import NonFiniteLossError
from victor.train.run import train_stage
from victor.train.trainer import VictorTrainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def data(colour_corpus, tmp_path_factory):
    return corpus_dir(colour_corpus, tmp_path_factory.mktemp("guards"), d_json="captions.json")


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


ENGINE_CONFIGS = resources.files("victor") / "recipes" / "deepspeed"
# engine -> (extra options, worker flag, the optimizer class that really steps)
ENGINES = {"torch-adamw": ([], "", "AdamW"),
           "zero2": (["--deepspeed", str(ENGINE_CONFIGS / "zero2.json")], "", "AdamW"),
           "zero3": (["--deepspeed", str(ENGINE_CONFIGS / "zero3.json")], "", "AdamW"),
           "zero3-offload": (["--deepspeed", str(ENGINE_CONFIGS / "zero3_offload.json")], "stand-in",
                             "StandInCPUAdam")}


@pytest.fixture(scope="module")
def stage1(backbones, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("guards-s1") / "s1"
    train_stage(recipe(backbones, data, out, steps=1, max_nonfinite=3))
    return out


def worker_run(stage1, data, out, engine, bad_steps, steps=4, max_nonfinite=3):
    """Stage 2 from `stage1` in a fresh interpreter, one process (DeepSpeed's process group and
    accelerate's state are global to a process)."""
    extra, flag, _ = ENGINES[engine]
    args = ["--stage", "2", "--init_from", str(stage1), "--data_path", str(data / "d.json"), "--image_root",
            str(data / "img"), "--output_dir", str(out), "--max_steps", str(steps), "--per_device_train_batch_size",
            "4", "--learning_rate", "1e-2", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True",
            "--logging_steps", "1", "--max_nonfinite_steps", str(max_nonfinite), "--disable_tqdm", "True", *extra]
    result = out.parent / f"{out.name}.json"
    cmd = [sys.executable, str(Path(__file__).parent / "guard_worker.py"), json.dumps(args), str(result),
           ",".join(map(str, sorted(bad_steps))), *([flag] if flag else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(result.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["zero3-offload", "zero3", "zero2"])
def test_a_nan_step_is_skipped_and_counted_with_the_optimizer_each_engine_substitutes(stage1, data, tmp_path, engine):
    """accelerate swaps our AdamW for DeepSpeedCPUAdam under ZeRO-Offload (a stand-in class here: the
    real one compiles a C++ op on first use) and ZeRO wraps whatever steps; step 2's loss is NaN."""
    run = worker_run(stage1, data, tmp_path / engine, engine, bad_steps={2})
    w = {int(k): v for k, v in run["after_step"].items()}
    assert run["optimizers"] == [ENGINES[engine][2]]
    assert w[1] == w[2] and w[2] != w[3] and all(math.isfinite(v) for v in w.values())
    assert run["nonfinite_steps_skipped"] == 1 and run["logged"] == [0, 1, 1, 1]


@pytest.mark.slow
def test_too_many_in_a_row_stop_a_zero_offload_run(stage1, data, tmp_path):
    run = worker_run(stage1, data, tmp_path / "z3o", "zero3-offload", bad_steps=set(range(2, 20)), steps=10,
                     max_nonfinite=2)
    assert run["error"] and "3 consecutive steps had non-finite gradients" in run["error"]
