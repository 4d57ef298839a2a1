"""What `resume` may take under each engine, and what a ZeRO-3 run records: a model-only or other
engine's checkpoint is passed over (or refused) with the reason; a ZeRO checkpoint resumed on
another process count is refused before anything loads; trainable counts are full under ZeRO-3."""
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from importlib import resources

import pytest
from PIL import Image

from victor.config import parse_recipe
from victor.train.checkpoint import CheckpointError, checkpoint_engine, deepspeed_world_size, resolve_resume
from victor.train.run import train_stage

pytestmark = pytest.mark.slow  # multi-process / full-pipeline: `pytest -m "not slow"` leaves it out

ZERO3 = str(resources.files("victor") / "recipes" / "deepspeed" / "zero3.json")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    (root / "img").mkdir()
    records = []
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 100, 200)).save(root / "img" / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is the image ?"}, {"from": "gpt", "value": "blue ."}]})
    (root / "d.json").write_text(json.dumps(records))
    return root


def args(data, out, stage="2", extra=()):
    return ["--stage", stage, "--data_path", str(data / "d.json"), "--image_root", str(data / "img"), "--output_dir",
            str(out), "--per_device_train_batch_size", "2", "--max_steps", "2", "--learning_rate", "1e-3",
            "--report_to", "none", "--use_cpu", "True", "--logging_steps", "1", "--disable_tqdm", "True", *extra]


@pytest.fixture(scope="module")
def zero3_run(backbones, data):
    """Stage 1 (one process, no engine), then stage 2 under ZeRO-3, one process, a checkpoint per step."""
    vision, llm = backbones
    s1 = data / "s1"
    train_stage(parse_recipe(None, args(data, s1, "1", ["--vision", vision, "--llm", llm, "--save_strategy", "no"])))
    out = data / "z3"
    cmd = [sys.executable, "-m", "victor.cli", "train",
           *args(data, out, "2", ["--init_from", str(s1), "--deepspeed", ZERO3, "--save_strategy", "steps",
                                  "--save_steps", "1"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return s1, out


def test_zero3_records_full_trainable_parameter_counts(zero3_run):
    """ZeRO-3 partitions parameters as they load (numel 0 on the module); the record counted those."""
    from transformers import LlavaForConditionalGeneration

    from victor.train.stages import apply_freezing, resolve_stage

    s1, out = zero3_run
    recorded = json.loads((out / "victor_stage.json").read_text())["trainable_parameters"]
    expected = apply_freezing(LlavaForConditionalGeneration.from_pretrained(s1), resolve_stage("2"))
    assert recorded == expected and recorded["llm"] > 0 and recorded["projector"] > 0


def test_the_engines_checkpoints_are_told_apart(zero3_run):
    _, out = zero3_run
    assert checkpoint_engine(out / "checkpoint-2") == "deepspeed" and deepspeed_world_size(out / "checkpoint-2") == 1


def test_auto_passes_over_a_model_only_checkpoint_saying_which_it_took(zero3_run, tmp_path, caplog):
    _, out = zero3_run
    run = tmp_path / "run"
    shutil.copytree(out / "checkpoint-1", run / "checkpoint-1")
    shutil.copytree(out / "checkpoint-2", run / "checkpoint-2", ignore=shutil.ignore_patterns("global_step*"))
    assert checkpoint_engine(run / "checkpoint-2") == "model-only"  # what save_only_model writes
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("auto", str(run), "deepspeed") == str(run / "checkpoint-1")
    assert "resuming from" in caplog.text and "checkpoint-2 (it holds no optimizer state (written with " \
                                                "save_only_model))" in caplog.text
    shutil.rmtree(run / "checkpoint-1")
    for resume in ("auto", "auto-or-new"):  # never a silent fresh start over a checkpoint it cannot use
        with pytest.raises(CheckpointError, match="no checkpoint .* that deepspeed can resume.*save_only_model.*"
                                                  "--init_from"):
            resolve_resume(resume, str(run), "deepspeed")
    with pytest.raises(CheckpointError, match="deepspeed cannot resume it: it holds no optimizer state"):
        resolve_resume(str(run / "checkpoint-2"), str(run), "deepspeed")


def test_another_engines_checkpoint_is_refused_naming_both(zero3_run):
    _, out = zero3_run
    with pytest.raises(CheckpointError, match="it holds deepspeed's optimizer state and this run uses torch"):
        resolve_resume("auto", str(out), "torch")


def test_resuming_zero3_on_another_process_count_fails_before_loading(zero3_run, data):
    s1, out = zero3_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resumed = data / "z3-two"
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "victor.cli", "train",
           *args(data, resumed, "2", ["--init_from", str(s1), "--deepspeed", ZERO3, "--max_steps", "4",
                                      "--resume_from_checkpoint", "auto"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode != 0
    assert "was written by 1 DeepSpeed processes and this run has 2" in proc.stderr, proc.stderr[-3000:]
    assert "--init_from" in proc.stderr and "Traceback" not in proc.stderr.split("was written by")[0][-2000:]
    assert not (resumed / "victor_stage.json").exists()
