"""One stage-1.5 run under torch FSDP2 (`fully_shard` on a CPU mesh, gloo), driven by a plain loop.

The Trainer's FSDP needs GPUs (on CPU accelerate silently runs DDP), so this exercises victor's
own FSDP-facing code the way the Trainer would on GPUs: the pool seeded before sharding,
stage-1.5 forward on sharded parameters, the full state dict gathered and written through the
checkpoint seam, and resume into freshly sharded parameters. With one process it is the
unsharded reference. Usage (torchrun): fsdp2_worker.py STAGE1 DATA IMAGES OUT STEPS [RESUME_FROM]
"""
import json
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from victor.config import ComprehensionConfig
from victor.data.collate import LlavaCollator
from victor.data.llava import LlavaDataset
from victor.model.assemble import load_model
from victor.model.comprehension import VisualComprehension
from victor.model.comprehension_state import load_state as load_extra_state
from victor.model.comprehension_state import save_state as save_extra_state
from victor.train.checkpoint import (
    check_full,
    full_shapes,
    load_llava_weights,
    load_state_into,
    split_state_dict,
)
from victor.train.engine import seed_pool_from_data
from victor.train.stages import apply_freezing, resolve_stage

GLOBAL_BATCH = 8


def main(stage1, data, images, out, steps, resume=None):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model, processor = load_model(stage1)
    vc = VisualComprehension(model, ComprehensionConfig(pool_size=32), mask_seed=0)
    apply_freezing(vc, resolve_stage("1.5"))
    dataset = LlavaDataset(data, images)
    collator = LlavaCollator(processor, model.config.image_seq_length, "chat", image_keys=True)
    seed_pool_from_data(vc, dataset, collator, SimpleNamespace(seed=0))
    if world > 1:
        mesh = init_device_mesh("cpu", (world,))
        for layer in vc.llava.model.language_model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(vc, mesh=mesh)
    first = 0
    optimizer = torch.optim.AdamW([p for p in vc.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if resume:
        load_llava_weights(vc.llava, resume)
        load_state_into(vc, load_extra_state(resume), resume)
        first = json.load(open(f"{resume}/victor_steps.json"))["steps"]
        # the optimizer state is the engine's business (the Trainer + accelerate on GPUs); here torch's own
        saved = torch.load(f"{resume}/optimizer.pt", weights_only=True) if rank == 0 else {}
        set_optimizer_state_dict(vc, optimizer, optim_state_dict=saved,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    losses = []
    for step in range(first, steps):
        indices = list(range(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH))
        share = GLOBAL_BATCH // world
        mine = collator([dataset[i] for i in indices[rank * share:(rank + 1) * share]])
        everyone = collator([dataset[i] for i in indices])
        num_items = int((everyone["labels"][:, 1:] != -100).sum())
        result = vc(**mine, mask_step=step, num_items_in_batch=num_items)
        # as VictorTrainer: the token-averaged LM loss is this rank's share of the global mean
        loss = result["loss"] + (world - 1) * result["lm_loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        total = torch.tensor([float(result["lm_loss"].detach()) * world + 10 * float(result["recon_loss"].detach())])
        dist.all_reduce(total)
        losses.append(total.item() / world)
    sharded = [p for p in vc.parameters() if isinstance(p, DTensor)]
    fractions = sorted({round(p.to_local().numel() / p.numel(), 3) for p in sharded if p.numel() >= world})
    state = get_model_state_dict(vc, options=full)
    optimizer_state = get_optimizer_state_dict(vc, optimizer, options=full)
    if rank == 0:
        torch.save(optimizer_state, f"{out}/optimizer.pt")
        check_full(state, full_shapes(vc), out)
        llava_state, extra = split_state_dict(state)
        vc.llava.save_pretrained(out, state_dict=llava_state, safe_serialization=True)
        save_extra_state(extra, out)
        json.dump({"steps": steps, "losses": losses, "sharded_parameters": len(sharded),
                   "local_fractions": fractions}, open(f"{out}/victor_steps.json", "w"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), *sys.argv[6:])
