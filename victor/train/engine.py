"""What differs between engines (one process, DDP, DeepSpeed ZeRO, FSDP), in one place.

The method's code (model/) never asks which engine runs it. What must happen outside the
engine's forward passes happens here, before the Trainer wraps the model:

* the dtype weights are loaded in;
* seeding the stage-1.5 pool from real visual tokens: every rank runs the same first
  batches through the (gathered) vision tower and projector, rank 0's rows are broadcast,
  so the pool is identical everywhere before DeepSpeed or FSDP take their copy of it.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SEED_BATCH = 16  # images per forward while seeding the pool: fixed, so the pool is the same on any engine


def uses_deepspeed(training_args) -> bool:
    return bool(getattr(training_args, "deepspeed", None))


def fsdp_requested(training_args) -> bool:
    """FSDP asked for on the command line (`--fsdp`) or by `accelerate launch` with an FSDP config
    (which sets ACCELERATE_USE_FSDP for the processes it starts)."""
    return bool(training_args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin(training_args):
    """The accelerate FSDP plugin the Trainer will build (from `fsdp_config`, the rest from
    accelerate launch's environment), or None when FSDP is not asked for."""
    if not fsdp_requested(training_args):
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(**(training_args.fsdp_plugin_args or {}))


def one_activation_checkpointing(training_args, plugin=None) -> None:
    """Under FSDP with its own activation checkpointing (`fsdp_activation_checkpointing: true` in
    recipes/fsdp/accelerate_fsdp2.yaml), turn the `activation_checkpointing` training argument
    (set by the 7B recipes for DeepSpeed) off: the Trainer refuses both at once, and FSDP's own
    avoids a redundant all-gather in the backward pass. Checkpointing stays on either way."""
    plugin = plugin if plugin is not None else fsdp_plugin(training_args)
    if plugin is None or not plugin.activation_checkpointing or not training_args.activation_checkpointing:
        return
    training_args.activation_checkpointing = training_args.gradient_checkpointing = False
    log.info("activation checkpointing: FSDP's own (fsdp_activation_checkpointing in the accelerate config); "
             "the recipe's activation_checkpointing training argument is turned off")


def launcherless_single_process() -> None:
    """`victor train` with DeepSpeed but without a launcher (one GPU): give the process the
    environment a 1-process torchrun would, or DeepSpeed falls back to MPI discovery (mpi4py)."""
    if any(k in os.environ for k in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")) or int(
            os.environ.get("SLURM_NTASKS", "1")) > 1:
        return  # a launcher (torchrun, deepspeed, accelerate, mpirun, srun) set the processes up
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    log.info("DeepSpeed without a launcher: one process (RANK=0, WORLD_SIZE=1)")


def init_distributed(training_args) -> None:
    """Set up the process group before anything collective (model loading under ZeRO-3 is).

    Accelerate does it for the Trainer (`args.device`); DeepSpeed's own communication layer
    is initialised on top of it, with gloo where there is no GPU (accelerate does not then).
    """
    if uses_deepspeed(training_args):
        launcherless_single_process()
    training_args.device  # noqa: B018 - property with the side effect of initialising the group
    if uses_deepspeed(training_args) and dist.is_available() and dist.is_initialized():
        import deepspeed

        if not deepspeed.comm.is_initialized():
            deepspeed.init_distributed(dist_backend=dist.get_backend())


def load_dtype(training_args) -> torch.dtype | None:
    """Weights load in the dtype the run trains in.

    DeepSpeed keeps fp32 master weights in its optimizer and runs the module in bf16/fp16, so
    the model is loaded in that half type (a 7B LLM: 14 GB, not 28 GB per rank). Without
    DeepSpeed, `bf16`/`fp16` mean autocast over fp32 weights, so weights stay fp32.
    """
    if uses_deepspeed(training_args):
        if training_args.bf16:
            return torch.bfloat16
        if training_args.fp16:
            return torch.float16
    return torch.float32


def gathered(params):
    """Full parameters for code that runs outside the engine's forward (ZeRO-3 partitions them)."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def broadcast_from_main(tensor: torch.Tensor) -> None:
    """Rank 0's values everywhere (in place); a no-op on one process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_device = tensor.cuda()
        dist.broadcast(on_device, src=0)
        tensor.copy_(on_device.cpu())
    else:
        dist.broadcast(tensor, src=0)


def first_visual_tokens(vc, dataset, collator, want: int, batch_size: int, seed: int,
                        max_batches: int = 64) -> torch.Tensor:
    """Projected visual tokens of the first image samples in a seeded order, until `want` tokens
    (or `max_batches` batches) are collected. Every rank reads the same samples."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    tokens, batch = [], []
    vision = [*vc.llava.model.vision_tower.parameters(), *vc.llava.model.multi_modal_projector.parameters()]
    with gathered(vision):
        for index in order:
            sample = dataset[index]
            if sample is None or not sample.images:
                continue
            batch.append(sample)
            if len(batch) < batch_size:
                continue
            tokens.append(_project(vc, collator, batch))
            batch = []
            if sum(t.shape[0] * t.shape[1] for t in tokens) >= want or len(tokens) >= max_batches:
                break
        if batch and sum(t.shape[0] * t.shape[1] for t in tokens) < want:
            tokens.append(_project(vc, collator, batch))
    if not tokens:
        raise ValueError("pool_init='tokens' needs image samples to seed the pool, and the data has none "
                         "that can be read; use pool_init='unit' for text-only data")
    return torch.cat([t.reshape(-1, t.shape[-1]).float().cpu() for t in tokens])


def _project(vc, collator, samples) -> torch.Tensor:
    images = [img for s in samples for img in s.images]
    pixels = collator.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    device = next(vc.llava.parameters()).device
    return vc.project_images(pixels.to(device))


def seed_pool_from_data(vc, dataset, collator, training_args) -> None:
    """The `tokens` pool initialisation, done once before the engine wraps the model."""
    tokens = first_visual_tokens(vc, dataset, collator, want=vc.pool.shape[0], batch_size=SEED_BATCH,
                                 seed=training_args.seed)
    generator = torch.Generator().manual_seed(training_args.seed)
    with gathered([vc.pool]):
        vc.seed_pool(tokens, generator=generator)
        broadcast_from_main(vc.pool.data)
    log.info("pool seeded from %d visual tokens", tokens.shape[0])


@torch.no_grad()
def replica_mismatches(module: torch.nn.Module) -> list[str]:
    """Names of replicated tensors (parameters and buffers not sharded by ZeRO-3 or FSDP) whose
    values differ between ranks; [] on one process. A cheap end-of-run self-check: two
    float64 checksums per tensor, compared with one all-reduce of the max and one of the min."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return []
    named = [(n, t) for n, t in module.state_dict(keep_vars=True).items()
             if not hasattr(t, "ds_id") and type(t).__name__ != "DTensor" and t.numel()]
    if not named:
        return []
    device = named[0][1].device if dist.get_backend() != "nccl" else torch.device("cuda")
    positions = {}
    sums = []
    for name, t in named:
        flat = t.detach().reshape(-1).double()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        sums += [flat.sum(), (flat * weights).sum()]
        positions[name] = len(sums) - 2
    local = torch.stack(sums).to(device)
    high, low = local.clone(), local.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    same = (high == low).cpu()
    return [n for n, i in positions.items() if not (same[i] and same[i + 1])]


def from_every_rank(value) -> list:
    """[rank 0's value, rank 1's, ...] (picklable values); [value] on one process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def sum_across_ranks(counts: dict[str, int]) -> dict[str, int]:
    """Per-key sums over all processes (keys may differ between ranks); the dict itself on one process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return dict(counts)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(counts))
    total: dict[str, int] = {}
    for part in gathered:
        for key, n in part.items():
            total[key] = total.get(key, 0) + n
    return dict(sorted(total.items()))


def placeholder_batch(dataset, collator, trains_llm: bool, seed: int) -> dict:
    """What a process runs (loss x 0) when its micro-batch has no usable sample: something that
    reaches every trainable module, supervising nothing. One padding token when the LLM trains;
    otherwise (stage 1) the first readable image sample, its labels cleared."""
    pad = collator.tokenizer.pad_token_id
    if trains_llm:
        batch = {"input_ids": torch.tensor([[pad]]), "attention_mask": torch.ones(1, 1, dtype=torch.long),
                 "labels": torch.full((1, 1), -100)}
        return collator.add_blank_image(batch) if collator.blank_image else batch
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    for index in order[:1000]:
        sample = dataset[index]
        if getattr(sample, "images", None):
            batch = collator([sample])
            batch.pop("data_stats", None)
            if batch["input_ids"].shape[0]:
                batch["labels"].fill_(-100)
                return batch
    raise ValueError("no readable image sample among the first 1000 records: check image_root and the data")
