"""Inference with the checkpoint's own processor and chat template: `Generator` (batched greedy or
sampled generation) and `Scorer` (batched log-likelihood of given answers, for likelihood scoring)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from victor.data.collate import expand_images
from victor.data.templates import Rendered
from victor.model.assemble import load_model


def user_message(prompt: str, with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def _open(images: list) -> list:
    return [Image.open(i).convert("RGB") if isinstance(i, (str, Path)) else i for i in images]


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
        images = _open(images)
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


class Scorer:
    """`Scorer(dir)(images, prompts, continuations)` -> one `(sum log-prob, tokens, greedy)` per request.

    The sequence scored is exactly what stage 2 trains on: the chat template renders the user
    turn (image + prompt) and an assistant turn holding the continuation; the continuation's
    tokens are those overlapping its characters (the template's end-of-turn text is not scored).
    `greedy` says whether every continuation token is the model's argmax. Requests that share
    an image object and prompt and continue with one token read their log-probability off one
    forward pass (causal attention: the logits before the continuation do not depend on it), so
    scoring k single-token options (letters, yes/no) costs one forward, not k. The template is
    rendered once per prompt (with a placeholder answer) and the vocabulary projection is applied
    only at the positions scored.
    """

    PLACEHOLDER = "\u2063victor-answer\u2063"

    def __init__(self, model, processor=None, dtype: torch.dtype | None = None, batch_size: int = 32):
        if isinstance(model, (str, Path)):
            model, processor = load_model(str(model), dtype=dtype)
        self.model, self.processor, self.batch_size = model.eval(), processor, batch_size
        self.tokenizer = processor.tokenizer
        self.n_visual = model.config.image_seq_length

    def _render(self, prompt: str, continuation: str, with_image: bool, cache: dict) -> tuple[str, int]:
        """The rendered exchange and the character offset where the continuation starts."""
        key = (prompt, with_image)
        if key not in cache:
            messages = user_message(prompt, with_image)
            before = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            reply = {"role": "assistant", "content": [{"type": "text", "text": self.PLACEHOLDER}]}
            full = self.processor.apply_chat_template(messages + [reply])
            ok = full.count(self.PLACEHOLDER) == 1 and full.startswith(before)
            cache[key] = (before, full.split(self.PLACEHOLDER) if ok else None)
        before, parts = cache[key]
        if parts is not None:
            return parts[0] + continuation + parts[1], len(parts[0])
        messages = user_message(prompt, with_image)  # a template that transforms the answer: render it as is
        full = self.processor.apply_chat_template(
            messages + [{"role": "assistant", "content": [{"type": "text", "text": continuation}]}])
        return full, full.find(continuation, len(before)) if full.startswith(before) else -1

    def encode(self, prompts: list[str], continuations: list[str], with_image: list[bool]):
        """Token ids of each rendered exchange and the [start, end) token range of its continuation."""
        texts, spans, cache = [], [], {}
        for prompt, continuation, image in zip(prompts, continuations, with_image):
            full, start = self._render(prompt, continuation, image, cache)
            if start < 0 or not continuation:
                raise ValueError(f"the chat template does not render the answer {continuation!r} after the prompt")
            rendered = expand_images(Rendered(full, [(start, start + len(continuation))]), self.n_visual)
            texts.append(rendered.text)
            spans.append(rendered.spans[0])
        enc = self.tokenizer(texts, return_offsets_mapping=True)
        out = []
        for ids, offsets, (a, b), continuation in zip(enc["input_ids"], enc["offset_mapping"], spans, continuations):
            inside = [i for i, (s, e) in enumerate(offsets) if e > a and s < b and e > s]
            if not inside or inside[0] == 0:
                raise ValueError(f"answer {continuation!r} has no tokens after the prompt")
            out.append((list(ids), inside[0], inside[-1] + 1))
        return out

    @torch.no_grad()
    def __call__(self, images: list, prompts: list[str], continuations: list[str]) -> list[tuple[float, int, bool]]:
        if not len(images) == len(prompts) == len(continuations):
            raise ValueError(f"{len(images)} images, {len(prompts)} prompts, {len(continuations)} continuations")
        images = _open(images)
        requests = self.encode(prompts, continuations, [i is not None for i in images])
        rows: list[tuple[list[int], object]] = []  # (ids, image) of each forward pass
        where, shared = [], {}
        for image, prompt, (ids, start, end) in zip(images, prompts, requests):
            key = (id(image), prompt)
            row = shared.get(key)
            if end - start == 1 and row is not None and rows[row][0][:start] == ids[:start]:
                where.append(row)
                continue
            rows.append((ids, image))
            where.append(len(rows) - 1)
            shared.setdefault(key, len(rows) - 1)
        needed: dict[int, set[int]] = {}
        for (ids, start, end), row in zip(requests, where):
            needed.setdefault(row, set()).update(range(start - 1, end - 1))
        logp = self._log_probs(rows, needed)
        out = []
        for (ids, start, end), row in zip(requests, where):
            target = torch.tensor(ids[start:end])
            scores = torch.stack([logp[row, pos] for pos in range(start - 1, end - 1)])
            picked = scores.gather(-1, target[:, None]).squeeze(-1)
            out.append((float(picked.sum()), end - start, bool((scores.argmax(-1) == target).all())))
        return out

    def _log_probs(self, rows: list[tuple[list[int], object]], needed: dict[int, set[int]]) -> dict:
        """{(row, position): log-softmax of the next-token logits}, for the positions needed, in batches
        of rows of similar length (right padding)."""
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        pixels: dict[int, torch.Tensor] = {}
        out = {}
        for first in range(0, len(order), self.batch_size):
            batch = order[first:first + self.batch_size]
            width = max(len(rows[r][0]) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for k, r in enumerate(batch):
                ids[k, :len(rows[r][0])] = torch.tensor(rows[r][0])
                mask[k, :len(rows[r][0])] = 1
            inputs = {"input_ids": ids.to(self.model.device), "attention_mask": mask.to(self.model.device)}
            present = [rows[r][1] for r in batch if rows[r][1] is not None]
            if present:
                todo = [i for i in dict.fromkeys(map(id, present)) if i not in pixels]
                fresh = {id(i): i for i in present if id(i) in todo}
                if fresh:
                    values = self.processor.image_processor(list(fresh.values()), return_tensors="pt")["pixel_values"]
                    pixels.update(zip(fresh, values))
                inputs["pixel_values"] = torch.stack([pixels[id(i)] for i in present]).to(
                    self.model.device, self.model.dtype)
            hidden = self.model.model(**inputs).last_hidden_state
            picks = [(k, r, pos) for k, r in enumerate(batch) for pos in sorted(needed[r])]
            index_k = torch.tensor([k for k, _, _ in picks], device=hidden.device)
            index_pos = torch.tensor([pos for _, _, pos in picks], device=hidden.device)
            logits = self.model.lm_head(hidden[index_k, index_pos]).float()
            for (_, r, pos), row in zip(picks, torch.log_softmax(logits, dim=-1).cpu()):
                out[r, pos] = row
        return out
