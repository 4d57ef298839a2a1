"""The tiny recipe's inputs in one call: the world, its tokenizer and pretrained tiny backbones."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from victor.tiny.backbones import save_backbones
from victor.tiny.pretrain import pretrain_llm, pretrain_vision
from victor.tiny.scenes import WorldConfig
from victor.tiny.world import build_tokenizer, ensure_world, world_texts

# bump when the way tiny backbones are built changes (format 2: the LLM reads scene slots; 3: the encoder is
# pretrained on colour and shape, not size)
BACKBONES_FORMAT = 3


def prepare_world(out_dir: str | Path, world=None, *, llm_layers: int = 2, vision_layers: int = 2, seed: int = 0,
                  llm_pretrain_steps: int = 300, vision_pretrain_steps: int = 200, vision_image_size: int = 96,
                  patch_size: int = 32):
    """The tiny recipe's inputs in one call: the world, its tokenizer, and tiny backbones.

    Writes `out_dir/{images,train,val}` (LLaVA JSON + benchmarks), `out_dir/backbones/vision`
    (pretrained on the training scenes' regions) and
    `out_dir/backbones/llm` (with the world's word-level tokenizer, text-pretrained on the
    training records, see `pretrain_llm`). Reuses the world if its config matches, and the
    backbones if `backbones/victor_backbones.json` matches the arguments (else rebuilds them).

    The encoder sees the image at `vision_image_size` in patches of `patch_size`: by default
    96 / 32, a 3x3 patch grid on the world's 3x3 grid of regions, so each visual token covers
    one region (objects never cross a region border). With 8-pixel patches of a 64-pixel image
    a 2-layer encoder this small cannot tell shapes apart (region probe at majority-class level).
    """
    world = world or WorldConfig()
    paths = ensure_world(out_dir, world)
    backbones = Path(out_dir) / "backbones"
    vision_dir, llm_dir = backbones / "vision", backbones / "llm"
    # what the backbones are made of; backbones built another way (an older victor, other
    # steps) or left half-built by a killed run are rebuilt, never silently reused
    recipe = {"format": BACKBONES_FORMAT, "llm_layers": llm_layers, "vision_layers": vision_layers, "seed": seed,
              "llm_pretrain_steps": llm_pretrain_steps, "vision_pretrain_steps": vision_pretrain_steps,
              "vision_image_size": vision_image_size, "patch_size": patch_size}
    record = backbones / "victor_backbones.json"
    if record.exists() and json.loads(record.read_text()) == recipe:
        return paths, str(vision_dir), str(llm_dir)
    partial = Path(out_dir) / "backbones.partial"
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = build_tokenizer(world_texts(out_dir))
    save_backbones(partial, tokenizer, image_size=vision_image_size, patch_size=patch_size,
                   vision_layers=vision_layers, llm_layers=llm_layers, seed=seed)
    if llm_pretrain_steps:
        pretrain_llm(partial / "llm", out_dir, steps=llm_pretrain_steps, seed=seed)
    if vision_pretrain_steps:
        pretrain_vision(partial / "vision", out_dir, steps=vision_pretrain_steps, seed=seed)
    (partial / record.name).write_text(json.dumps(recipe, indent=1))
    shutil.rmtree(backbones, ignore_errors=True)
    partial.rename(backbones)
    return paths, str(vision_dir), str(llm_dir)
