"""Stage 1.5's own state beside a LLaVA checkpoint: the pool, the reconstruction head and the
pool-usage counters, in one safetensors file. The one owner of that file's name and layout;
checkpointing, conversion, preflight, serving and the CLI all go through it.

Keys: `pool` [rows, LLM hidden], `pool_ready` (bool), `usage` [rows] (int64), `head.*` (the
head's state dict). A converted release may add `croc_head.*` (the released head, kept as is).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

STATE_FILE = "comprehension.safetensors"


class MissingStateError(RuntimeError):
    """A directory without stage-1.5 state where it was required."""


def state_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / STATE_FILE


def has_state(directory: str | os.PathLike) -> bool:
    return state_path(directory).is_file()


def save_state(state: dict[str, torch.Tensor], directory: str | os.PathLike) -> Path:
    """Write `state` (CPU, contiguous copies) to `directory`/comprehension.safetensors."""
    path = state_path(directory)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
    return path


def load_state(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = state_path(directory)
    if not path.is_file():
        raise MissingStateError(f"{directory}: no {STATE_FILE}; it is not a stage-1.5 checkpoint (a stage-1.5 output "
                                "or a checkpoint converted from a Croc/ViCToR release has one)")
    return load_file(str(path))


def pool_rows(directory: str | os.PathLike) -> int | None:
    """Rows of the saved pool, read from the file's header (no tensor is loaded); None without one."""
    path = state_path(directory)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return f.get_slice("pool").get_shape()[0] if "pool" in f.keys() else None
