"""The training stage as a value: what it trains, which template it reads, what it wraps.

    stage 1    projector alignment      trains projector                  plain template
    stage 1.5  visual comprehension     trains projector, llm, pool, head chat template
    stage 2    instruction tuning       trains projector, llm             chat template

`train_vision` adds the vision tower (ViCToR trains it at a small lr in 1.5 and 2). A stage
1.5 with `comprehension=False` is the plain detailed-caption baseline of the ablation.
Distributed strategy is not decided here: that is TrainingArguments' job.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MODULES = ("projector", "llm", "vision", "pool", "head")


@dataclass(frozen=True)
class Stage:
    name: str
    trains: frozenset[str]
    template: str
    comprehension: bool


STAGES = {
    "1": Stage("1", frozenset({"projector"}), "plain", False),
    "1.5": Stage("1.5", frozenset({"projector", "llm", "pool", "head"}), "chat", True),
    "2": Stage("2", frozenset({"projector", "llm"}), "chat", False),
}


def resolve_stage(name: str, train_vision: bool = False, comprehension: bool | None = None,
                  template: str | None = None) -> Stage:
    if str(name) not in STAGES:
        raise ValueError(f"stage={name!r}; choose one of {sorted(STAGES)}")
    base = STAGES[str(name)]
    use_comprehension = base.comprehension if comprehension is None else (comprehension and base.name == "1.5")
    trains = set(base.trains) | ({"vision"} if train_vision else set())
    if not use_comprehension:
        trains -= {"pool", "head"}
    return Stage(base.name, frozenset(trains), template or base.template, use_comprehension)


def modules_of(model: torch.nn.Module) -> dict[str, str]:
    """Parameter name -> which of MODULES it belongs to, by module identity (not by name)."""
    llava = getattr(model, "llava", model)
    owners = {"projector": llava.model.multi_modal_projector, "vision": llava.model.vision_tower}
    owners.update({k: getattr(model, k) for k in ("pool", "head") if hasattr(model, k)})
    ids = {}
    for module, owner in owners.items():
        params = [owner] if isinstance(owner, torch.nn.Parameter) else owner.parameters()
        ids.update({id(p): module for p in params})
    return {name: ids.get(id(p), "llm") for name, p in model.named_parameters()}


def full_numel(param: torch.Tensor) -> int:
    """Elements of the whole parameter: ZeRO-3 keeps a partition (numel 0 outside a gather) and
    the full count in `ds_numel`; an FSDP2 DTensor's numel is already the full one."""
    return int(getattr(param, "ds_numel", param.numel()))


def apply_freezing(model: torch.nn.Module, stage: Stage) -> dict[str, int]:
    """Set requires_grad from the stage; return trainable parameter counts per module."""
    counts = dict.fromkeys(MODULES, 0)
    owner = modules_of(model)
    for name, param in model.named_parameters():
        module = owner[name]
        param.requires_grad_(module in stage.trains)
        if param.requires_grad:
            counts[module] += full_numel(param)
    return counts
