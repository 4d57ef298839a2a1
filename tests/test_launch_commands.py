"""The launch commands in README.md and docs/*.md, read from those files (never copied here):

* every command is parsed, and everything it names (recipe, DeepSpeed config, accelerate config)
  is loaded and validated; where the GPU count is part of the command (torchrun, accelerate, or
  an accumulation changed for it), the global batch is the published one;
* the FSDP2 accelerate config goes through accelerate's own launcher code into the environment
  its processes get, and the Trainer arguments and accelerate's FSDP plugin are built from it:
  FSDP 2 really configured, and not both activation checkpointings (the Trainer refuses that);
* two single-node commands run here on the tiny recipe, process count and paths substituted.
"""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from victor.config import ConfigError, parse_recipe
from victor.train.engine import fsdp_plugin, one_activation_checkpointing

pytestmark = pytest.mark.slow  # multi-process / full-pipeline: `pytest -m "not slow"` leaves it out

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PUBLISHED_GLOBAL_BATCH = {"1": 256, "1.5": 128, "2": 128}
CPU = ["--use_cpu", "True", "--tf32", "False"]  # bf16/tf32 recipes are validated against the hardware
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _snippets(text: str) -> list[str]:
    """Shell lines of fenced blocks (continuations joined), then inline `code` spans."""
    found = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):  # every fence pairs, whatever its language
        if lang in ("", "bash", "sh"):
            found += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    return found


def launch_commands() -> list[tuple[str, str]]:
    """(where, command) for every command in the docs that trains."""
    out = []
    for path in DOCS:
        for line in _snippets(path.read_text()):
            line = line.strip()
            trains = re.match(r"(srun )?((torchrun|accelerate launch) .*?)?(victor|-m victor\.cli) train (\S+\.yaml|RECIPE)",
                              line)
            if trains:
                out.append((f"{path.name}: {line[:60]}", line))
    return out


def parse_command(command: str) -> dict:
    """Launcher, processes per node, nodes, accelerate config, recipe and the options after it."""
    words = shlex.split(command, comments=True)
    while words and words[0] in ("srun",):
        words = words[1:]
    train = words.index("train")
    launcher_words, rest = words[:train], words[train + 1:]

    def option(name, default=None):
        return launcher_words[launcher_words.index(name) + 1] if name in launcher_words else default

    launcher = {"victor": "victor", "torchrun": "torchrun", "accelerate": "accelerate"}[launcher_words[0]]
    recipe, options = (rest[0], rest[1:]) if rest and not rest[0].startswith("--") else (None, rest)
    return {"launcher": launcher, "nproc": option("--nproc_per_node", "1"), "nnodes": option("--nnodes", "1"),
            "config_file": option("--config_file"), "recipe": recipe, "options": options, "words": words}


def accelerate_environment(words: list[str]) -> tuple[dict[str, str], object]:
    """What `accelerate launch` puts in its processes' environment, by accelerate's own code."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(words[2:])
    args, _, _ = _validate_launch_command(args)
    args.main_process_port = 0  # a free port: the check for a busy one is not what is tested
    env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}, args


COMMANDS = launch_commands()


def test_the_docs_have_the_launch_commands_this_file_checks():
    kinds = [parse_command(c)["launcher"] for _, c in COMMANDS]
    assert kinds.count("torchrun") >= 3 and kinds.count("accelerate") >= 1 and kinds.count("victor") >= 3, COMMANDS


@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_launch_command_loads_what_it_names(where, command, monkeypatch):
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    cmd = parse_command(command)
    recipes = [cmd["recipe"]] if cmd["recipe"] != "RECIPE" else [
        f"recipes/{name}/{stage}.yaml" for name in ("croc-7b", "victor-7b") for stage in ("stage1", "stage1_5", "stage2")]
    nodes = None if cmd["nnodes"].startswith("$") else int(cmd["nnodes"])
    gpus = int(cmd["nproc"])
    if cmd["launcher"] == "accelerate":
        env, launch_args = accelerate_environment(cmd["words"])
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        gpus, nodes = int(launch_args.num_processes), 1
    for recipe in recipes:
        assert (ROOT / recipe).is_file(), f"{where}: no recipe {recipe}"
        parsed = parse_recipe(ROOT / recipe, [*cmd["options"], *CPU])
        t = parsed.training
        if t.deepspeed:
            assert Path(t.deepspeed).is_file(), f"{where}: DeepSpeed config {t.deepspeed} not found"
            ds = HfTrainerDeepSpeedConfig(json.loads(Path(t.deepspeed).read_text()))
            ds.trainer_config_process(t)  # fills the `auto` values from the recipe; refuses contradictions
            assert ds.get_value("train_micro_batch_size_per_gpu") == t.per_device_train_batch_size
        published = not recipe.startswith("recipes/tiny/")  # the tiny recipe's batch is its own
        tunes_for_gpus = published and (cmd["launcher"] != "victor" or "--gradient_accumulation_steps" in cmd["options"])
        if tunes_for_gpus and nodes is not None:
            global_batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * gpus * nodes
            assert global_batch == PUBLISHED_GLOBAL_BATCH[parsed.stage.stage], (
                f"{where}: {recipe} on {gpus} x {nodes} GPUs has global batch {global_batch}, published "
                f"{PUBLISHED_GLOBAL_BATCH[parsed.stage.stage]}: set --gradient_accumulation_steps")


def fsdp_commands():
    return [(w, c) for w, c in COMMANDS if parse_command(c)["config_file"]]


@pytest.mark.parametrize("where,command", fsdp_commands(), ids=[w for w, _ in fsdp_commands()])
def test_the_fsdp2_accelerate_config_really_configures_fsdp2(where, command, monkeypatch):
    """Fault 5: the accelerate config's FSDP activation checkpointing and the recipes'
    `activation_checkpointing` argument were both on, which the Trainer refuses at start."""
    cmd = parse_command(command)
    env, launch_args = accelerate_environment(cmd["words"])
    assert launch_args.use_fsdp and not launch_args.multi_gpu  # FSDP, not plain multi-GPU DDP
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for name, layers in (("croc-7b", {"LlamaDecoderLayer", "CLIPEncoderLayer"}),
                         ("victor-7b", {"Qwen2DecoderLayer", "SiglipEncoderLayer"})):
        recipe = parse_recipe(ROOT / "recipes" / name / "stage1_5.yaml", [*cmd["options"], *CPU])
        t = recipe.training
        assert not t.deepspeed and t.activation_checkpointing  # the recipe asks for checkpointing
        plugin = fsdp_plugin(t)
        assert plugin is not None and plugin.fsdp_version == 2
        assert layers <= set(plugin.transformer_cls_names_to_wrap) and plugin.reshard_after_forward
        assert str(plugin.state_dict_type).endswith("FULL_STATE_DICT")  # what the checkpoint seam gathers
        one_activation_checkpointing(t, plugin)
        # the Trainer raises when both are on (transformers Trainer.create_accelerator_and_postprocess)
        assert plugin.activation_checkpointing and not t.activation_checkpointing


def test_fsdp_from_accelerate_launch_is_refused_on_cpu_not_run_as_ddp(monkeypatch, tmp_path):
    from victor.train.run import train_stage

    where, command = fsdp_commands()[0]
    env, _ = accelerate_environment(parse_command(command)["words"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    recipe = parse_recipe(ROOT / "recipes" / "tiny" / "stage1.yaml", ["--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="accelerate launch's FSDP config.*silently run plain DDP"):
        train_stage(recipe)


# -- two commands run here -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    (root / "img").mkdir()
    records = []
    for i in range(16):
        colour = ("red", "green", "blue", "yellow")[i % 4]
        Image.new("RGB", (32, 32), ((230, 20, 20), (20, 200, 20), (20, 20, 230), (230, 230, 20))[i % 4]).save(
            root / "img" / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image in detail ."},
            {"from": "gpt", "value": f"the background is {colour} . there are no objects ."}]})
    (root / "d.json").write_text(json.dumps(records))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_tiny(cmd: dict, model: list[str], data: Path, out: Path, nproc: int) -> list[str]:
    """The command as it runs here: the tiny recipe of the same stage, the named recipe's engine
    config unless the command names one, tiny paths and sizes, `nproc` processes."""
    named = ROOT / cmd["recipe"]
    tiny = ROOT / "recipes" / "tiny" / named.name
    train = [str(tiny), *cmd["options"]]
    if "--deepspeed" not in cmd["options"] and parse_recipe(named, CPU).training.deepspeed:
        train += ["--deepspeed", parse_recipe(named, CPU).training.deepspeed]
    train += [*model, "--data_path", str(data / "d.json"), "--image_root", str(data / "img"), "--output_dir", str(out),
              "--max_steps", "2", "--per_device_train_batch_size", "2", "--pool_size", "32", "--report_to", "none",
              "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "True", *CPU]
    if cmd["launcher"] == "victor":
        return [sys.executable, "-m", "victor.cli", "train", *train]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), "-m", "victor.cli", "train", *train]


def first(launcher: str, stage_file: str) -> dict:
    """The first single-node command of a published recipe (the tiny recipe's own commands aside)."""
    return next(parse_command(c) for _, c in COMMANDS if parse_command(c)["launcher"] == launcher
                and parse_command(c)["nnodes"] == "1" and (parse_command(c)["recipe"] or "").endswith(stage_file)
                and not parse_command(c)["recipe"].startswith("recipes/tiny/"))


def test_the_first_stage1_and_torchrun_stage15_commands_run_on_the_tiny_recipe(backbones, tiny_data, tmp_path):
    """`victor train recipes/croc-7b/stage1.yaml` (its ZeRO-2, 1 process), then the first single-node
    torchrun stage-1.5 command (its ZeRO-3) on 2 processes from that stage 1."""
    vision, llm = backbones
    runs = [(first("victor", "stage1.yaml"), ["--vision", vision, "--llm", llm], tmp_path / "s1", 1)]
    runs.append((first("torchrun", "stage1_5.yaml"), ["--init_from", str(tmp_path / "s1")], tmp_path / "s15", 2))
    for cmd, model, out, nproc in runs:
        proc = subprocess.run(on_tiny(cmd, model, tiny_data, out, nproc), capture_output=True, text=True, timeout=600,
                              env=ENV, cwd=ROOT)  # the docs run from the checkout
        assert proc.returncode == 0, proc.stderr[-4000:]
        record = json.loads((out / "victor_stage.json").read_text())
        assert record["steps_run"] == 2 and record["world_size"] == nproc and (out / "model.safetensors").is_file()
    assert record["stage"] == "1.5" and record["trainable_parameters"]["pool"] == 32 * 64
    assert record["trainable_parameters"]["llm"] > 0  # counted in full under ZeRO-3 (ds_numel)


def test_the_readme_zero3_bf16_command_runs_stage15_on_the_tiny_recipe(backbones, tiny_data, tmp_path):
    """The README's one-process ZeRO-3 + bf16 stage 1.5 of the tiny recipe (the 7B recipes' engine
    and precision), run as written but for the tiny data's paths and 2 steps."""
    from helpers import train_stage1

    s1 = tmp_path / "s1"
    train_stage1(backbones, tiny_data / "d.json", tiny_data / "img", s1, steps=1, batch=4)
    (cmd,) = [parse_command(c) for _, c in COMMANDS if "recipes/tiny/stage1_5.yaml" in c and "zero3" in c]
    assert "--bf16" in cmd["options"] and cmd["nproc"] == "1"
    out = tmp_path / "s15"
    proc = subprocess.run(on_tiny(cmd, ["--init_from", str(s1)], tiny_data, out, 1), capture_output=True, text=True,
                          timeout=600, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((out / "victor_stage.json").read_text())
    assert record["steps_run"] == 2 and record["trainable_parameters"]["llm"] > 0
    from safetensors.torch import load_file
    import torch

    assert load_file(str(out / "comprehension.safetensors"))["pool"].dtype == torch.bfloat16
