"""One training process for tests/test_guards.py: stage 1 with a chosen engine config, the loss made
NaN at the steps named, the projector weight recorded after every step (gathered under ZeRO-3).

    python tests/guard_worker.py RECIPE_ARGS_JSON OUT_JSON BAD_STEPS [stand-in]

`stand-in`: deepspeed.ops.adam.DeepSpeedCPUAdam is replaced by a pure-torch AdamW subclass before
anything imports it, so ZeRO-Offload runs the same substitution (accelerate's
map_pytorch_optim_to_deepspeed, DeepSpeed's isinstance checks) without compiling the CPU Adam op.
"""
import json
import os
import socket
import sys

import torch
from transformers import TrainerCallback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandInCPUAdam(torch.optim.AdamW):
    """DeepSpeedCPUAdam's constructor over torch's AdamW (the real one needs its C++ op)."""

    def __init__(self, model_params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, adamw_mode=True, fp32_optimizer_states=True):
        super().__init__(model_params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class Projector(TrainerCallback):
    def __init__(self):
        self.after_step, self.optimizers = {}, set()

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        from victor.train.engine import gathered

        weight = model.model.multi_modal_projector.linear_1.weight
        with gathered([weight]):
            self.after_step[state.global_step] = weight.detach().float().sum().item()
        inner = optimizer.optimizer  # accelerate's wrapper -> the engine's optimizer (ZeRO's, or ours)
        self.optimizers.add(type(getattr(inner, "optimizer", inner)).__name__)  # ZeRO's basic optimizer


def main(argv: list[str]) -> None:
    recipe_args, out, bad = json.loads(argv[0]), argv[1], {int(s) for s in argv[2].split(",") if s}
    if len(argv) > 3 and argv[3] == "stand-in":
        import deepspeed.ops.adam

        deepspeed.ops.adam.DeepSpeedCPUAdam = StandInCPUAdam
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        os.environ.setdefault(key, value)

    from victor.config import parse_recipe
    from victor.train.guards import NonFiniteLossError
    from victor.train.run import train_stage
    from victor.train.trainer import VictorTrainer

    original = VictorTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step + 1 in bad else loss

    VictorTrainer.compute_loss = compute_loss
    watch = Projector()
    error = None
    try:
        train_stage(parse_recipe(None, recipe_args), callbacks=[watch])
    except NonFiniteLossError as err:
        error = str(err)
    record_path = os.path.join(dict(zip(recipe_args[::2], recipe_args[1::2]))["--output_dir"], "victor_stage.json")
    record = json.load(open(record_path)) if os.path.isfile(record_path) else {}
    with open(out, "w") as f:
        json.dump({"after_step": watch.after_step, "optimizers": sorted(watch.optimizers), "error": error,
                   "nonfinite_steps_skipped": record.get("nonfinite_steps_skipped"),
                   "logged": [h.get("train/nonfinite_steps_skipped") for h in record.get("log_history", [])
                              if "loss" in h]}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
