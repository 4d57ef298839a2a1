"""The checkpoint seam: what a stage writes and reads, correct under every engine.

A stage directory (or `checkpoint-N`) holds a stock LLaVA checkpoint (`config.json`,
safetensors, processor) and, in stage 1.5, the pool and head beside it (`model/comprehension_state.py`).

* Saving takes the state dict the engine hands over (the Trainer gathers it on the writer
  rank under ZeRO-3 and FSDP), splits it into LLaVA keys and stage-1.5 keys, and writes on
  the writer rank only. Reading a parameter off the live module instead would save
  ZeRO-3's empty partitions.
* Resuming copies safetensors tensors straight into the live model, one tensor at a time,
  with transformers' own mapping from saved to live names: no second model in memory.
* A checkpoint is complete when its marker (`COMPLETE`) exists: written last, after every
  process has finished writing its part, and only then are older checkpoints rotated away. A
  kill during a save leaves a `checkpoint-N` without the marker, which resume never takes.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers.core_model_loading import revert_weight_conversion

COMPLETE = "victor_complete.json"  # written last into checkpoint-N: everything else there is on disk
LLAVA_PREFIX = "llava."
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


def split_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A stage-1.5 module's state dict -> (LLaVA keys without the prefix, pool/head/counter keys)."""
    llava = {k[len(LLAVA_PREFIX):]: v for k, v in state_dict.items() if k.startswith(LLAVA_PREFIX)}
    extra = {k: v for k, v in state_dict.items() if not k.startswith(LLAVA_PREFIX)}
    return llava, extra


def full_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry's full shape, also for parameters ZeRO-3 has partitioned."""
    return {k: tuple(getattr(v, "ds_shape", v.shape)) for k, v in module.state_dict(keep_vars=True).items()}


def check_full(state_dict: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """Refuse to write a checkpoint with missing or partitioned (wrongly shaped) tensors."""
    wrong = sorted(k for k, shape in shapes.items() if k not in state_dict or tuple(state_dict[k].shape) != shape)
    if wrong:
        raise CheckpointError(
            f"{what}: the engine handed over an incomplete state dict ({len(wrong)} tensors missing or partitioned, "
            f"e.g. {wrong[:3]}); under ZeRO-3 set stage3_gather_16bit_weights_on_model_save: true")


def _weight_files(directory: str | os.PathLike) -> list[str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        return [os.path.join(directory, s) for s in shards]
    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise CheckpointError(f"{directory}: no model.safetensors (or index); not a complete checkpoint")


def saved_names(llava) -> dict[str, str]:
    """Live parameter/buffer name -> the name `save_pretrained` writes it under."""
    live = llava.state_dict()
    names = {}
    for key in live:
        (saved,) = revert_weight_conversion(llava, {key: torch.empty(0)})
        names[key] = saved
    return names


def copy_into(target: torch.Tensor, tensor: torch.Tensor) -> None:
    """Copy a full tensor into a live parameter or buffer, also one FSDP2 has sharded (a DTensor:
    each rank keeps its own shard of the full tensor)."""
    tensor = tensor.to(target.dtype)
    if isinstance(target, DTensor):
        tensor = distribute_tensor(tensor.to(target.device), target.device_mesh, target.placements)
    target.copy_(tensor)


@torch.no_grad()
def load_state_into(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy tensors into `module` by state-dict name (sharded or not); every name must exist there."""
    live = module.state_dict(keep_vars=True)
    unknown = sorted(set(state) - set(live))
    if unknown:
        raise CheckpointError(f"{where}: {unknown[:5]} have no place in {type(module).__name__}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(live[key].shape):
            raise CheckpointError(f"{where}: {key} has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(live[key].shape)}")
        copy_into(live[key], tensor)


@torch.no_grad()
def load_llava_weights(llava, directory: str | os.PathLike) -> None:
    """Copy a saved LLaVA checkpoint into the live model, tensor by tensor, in its dtype."""
    live = llava.state_dict(keep_vars=True)
    wanted = {saved: key for key, saved in saved_names(llava).items()}
    loaded = set()
    for path in _weight_files(directory):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                key = wanted.get(name)
                if key is None:
                    raise CheckpointError(f"{path}: tensor {name!r} has no place in {type(llava).__name__}")
                target = live[key]
                tensor = f.get_tensor(name)
                if tensor.shape != target.shape:
                    raise CheckpointError(f"{path}: {name} has shape {tuple(tensor.shape)}, "
                                          f"the model expects {tuple(target.shape)}")
                copy_into(target, tensor)
                loaded.add(key)
    tied = {id(p) for k, p in live.items() if k in loaded}
    missing = [k for k, p in live.items() if k not in loaded and id(p) not in tied]
    if missing:
        raise CheckpointError(f"{directory}: no weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def is_complete(directory: str | os.PathLike) -> bool:
    """A checkpoint that resume can use: its completion marker, a readable trainer state, and
    weights (safetensors, or DeepSpeed's own `global_step*` layout when ZeRO-3 does not gather them)."""
    d = Path(directory)
    if not (d / COMPLETE).is_file():
        return False
    try:
        json.loads((d / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file() or any(
        d.glob("global_step*"))


def mark_complete(directory: str | os.PathLike, step: int) -> None:
    """Write the completion marker (atomically: a temporary name, fsync, rename)."""
    d = Path(directory)
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != COMPLETE)
    tmp = d / f".{COMPLETE}.tmp"
    with open(tmp, "w") as f:
        json.dump({"step": step, "files": files}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / COMPLETE)


def checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every `checkpoint-N` directory in `output_dir`, newest first (complete or not)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(((int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()),
                  reverse=True)


def rotate(output_dir: str | os.PathLike, keep: int | None, protect: str | None = None) -> list[str]:
    """After a checkpoint was marked complete: delete every incomplete `checkpoint-N` (what a kill
    left behind) and all complete ones but the newest `keep` (and `protect`, the best model).
    Returns the deleted names."""
    import shutil

    deleted, kept = [], 0
    for _, path in checkpoints(output_dir):
        if is_complete(path):
            kept += 1
            if keep is None or keep <= 0 or kept <= keep or (protect and Path(protect).resolve() == path.resolve()):
                continue
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path.name)
    return deleted


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir`."""
    return next((str(path) for _, path in checkpoints(output_dir) if is_complete(path)), None)


ENGINES = ("torch", "deepspeed", "fsdp")  # torch: one process or DDP


def checkpoint_engine(directory: str | os.PathLike) -> str:
    """Which engine's training state a checkpoint holds: `deepspeed` (its `global_step*` folder),
    `fsdp` (sharded optimizer folder), `torch` (`optimizer.pt`), or `model-only` (`save_only_model`:
    weights and trainer state, no optimizer, which no engine can continue exactly)."""
    d = Path(directory)
    if any(p.is_dir() for p in d.glob("global_step*")):
        return "deepspeed"
    if any(d.glob("optimizer_0*")) or any(d.glob("pytorch_model_fsdp_0*")):
        return "fsdp"
    if (d / "optimizer.pt").is_file() or (d / "optimizer.safetensors").is_file():
        return "torch"
    return "model-only"


def _unresumable(directory: Path, engine: str | None) -> str | None:
    """Why `engine` cannot resume from this complete checkpoint, or None when it can."""
    if engine is None:
        return None
    written = checkpoint_engine(directory)
    if written == engine:
        return None
    if written == "model-only":
        return "it holds no optimizer state (written with save_only_model)"
    return f"it holds {written}'s optimizer state and this run uses {engine}"


def deepspeed_world_size(directory: str | os.PathLike) -> int | None:
    """How many data-parallel processes wrote a DeepSpeed ZeRO checkpoint (one optimizer-state
    file per rank in `global_stepN/`), or None when it is not one."""
    folders = sorted(p for p in Path(directory).glob("global_step*") if p.is_dir())
    if not folders:
        return None
    return len(list(folders[-1].glob("*zero_pp_rank_*_optim_states.pt"))) or None


def check_world_size(directory: str, engine: str, world_size: int) -> None:
    """Refuse, before anything loads, a ZeRO checkpoint written by another number of processes:
    its optimizer state is partitioned per rank, and DeepSpeed fails deep inside the load."""
    if engine != "deepspeed":
        return
    saved = deepspeed_world_size(directory)
    if saved is None or saved == world_size:
        return
    raise CheckpointError(
        f"{directory} was written by {saved} DeepSpeed processes and this run has {world_size}: ZeRO's optimizer "
        f"state is split per process and cannot be loaded on another count. Resume on {saved} processes; or "
        f"continue from its weights with a fresh optimizer: --init_from {directory} (stage 1.5: with "
        "--pool_init checkpoint) and --resume_from_checkpoint unset; or convert it to a DeepSpeed universal "
        "checkpoint (python -m deepspeed.checkpoint.ds_to_universal) and load that with DeepSpeed "
        "(not tested with victor). The grouped sampler's data order depends on the number of processes too.")


def resolve_resume(resume: str | bool | None, output_dir: str, engine: str | None = None) -> str | None:
    """`--resume_from_checkpoint` -> a checkpoint directory, None (start fresh), or a clear error.

    `auto` takes the newest complete checkpoint in `output_dir` that `engine` can resume (one
    holding that engine's optimizer state; others are skipped with a warning saying why) and
    refuses to start fresh when there is none; `auto-or-new` starts fresh when there is no
    checkpoint at all (for jobs that are requeued with the same command), but not when the
    checkpoints there are ones this engine cannot resume. A path must be a training checkpoint,
    not a finished stage's output, and one `engine` can resume.
    """
    if resume in (None, False, "", "False", "false", "no"):
        return None
    if resume in (True, "True", "true", "auto", "auto-or-new"):
        root = Path(output_dir)
        passed_over = []
        for _, path in checkpoints(root):
            if not is_complete(path):
                continue
            why = _unresumable(path, engine)
            if why is None:
                if passed_over:
                    log.warning("--resume_from_checkpoint %s: resuming from %s; passed over %s", resume, path,
                                "; ".join(passed_over))
                return str(path)
            passed_over.append(f"{path.name} ({why})")
        if passed_over:
            raise CheckpointError(
                f"--resume_from_checkpoint {resume}: no checkpoint in {output_dir} that {engine} can resume: "
                f"{'; '.join(passed_over)}. Resume with the engine that wrote it, or start from its weights "
                f"with --init_from {root / passed_over[0].split(' ')[0]} (and a fresh optimizer)")
        if resume != "auto-or-new":
            raise CheckpointError(
                f"--resume_from_checkpoint auto: no complete checkpoint-N in {output_dir}; "
                "use --resume_from_checkpoint auto-or-new to start from scratch when there is none")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {resume}: no such directory")
    if not is_complete(path):
        hint = (" (it is a finished stage's output: use it as init_from of the next stage)"
                if (path / "victor_stage.json").is_file() else "")
        raise CheckpointError(f"--resume_from_checkpoint {resume}: not a complete training checkpoint "
                              f"(its {COMPLETE} marker, trainer_state.json and weights){hint}")
    why = _unresumable(path, engine)
    if why is not None:
        raise CheckpointError(f"--resume_from_checkpoint {resume}: {engine} cannot resume it: {why}. Resume with "
                              f"the engine that wrote it, or start from its weights with --init_from {resume}")
    return str(path)
