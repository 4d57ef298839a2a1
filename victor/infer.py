"""Batched generation with the model's own processor and chat template (greedy or sampled)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from victor.model.assemble import load_model


def user_message(prompt: str, with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


class Generator:
    """`Generator(dir)(images, prompts)` -> answers. Images may be PIL images, paths or None."""

    def __init__(self, model, processor=None, dtype: torch.dtype | None = None):
        if isinstance(model, (str, Path)):
            model, processor = load_model(str(model), dtype=dtype)
        self.model, self.processor = model.eval(), processor
        self.processor.tokenizer.padding_side = "left"

    @torch.no_grad()
    def __call__(self, images: list, prompts: list[str], max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> list[str]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        images = [Image.open(i).convert("RGB") if isinstance(i, (str, Path)) else i for i in images]
        texts = [self.processor.apply_chat_template(user_message(p, i is not None), add_generation_prompt=True)
                 for p, i in zip(prompts, images)]
        present = [i for i in images if i is not None]
        inputs = self.processor(text=texts, images=present or None, return_tensors="pt", padding=True)
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        if seed is not None:
            torch.manual_seed(seed)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling,
                                  pad_token_id=self.processor.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]
