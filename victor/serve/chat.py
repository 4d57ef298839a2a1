"""What the web chat does, without the web: multi-turn prompts, streamed answers, the pool view.

`ChatModel(dir)` loads a checkpoint (stock `llava` or `victor_llava`) with its processor and
chat template. `stream(image, history, question, ...)` renders the conversation with the
checkpoint's own template (the image belongs to the first user turn, as in LLaVA's demo) and
yields the growing answer while `generate` runs in a thread behind transformers'
`TextIteratorStreamer`. For a checkpoint with `comprehension.safetensors` (a stage-1.5 output or
a converted Croc/ViCToR release), `pool_matches(image)` shows which pool row each patch's visual
token matches: nearest row (Euclidean, as the matching cost) or one-to-one (Hungarian).
"""
from __future__ import annotations

import colorsys
import threading
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image, ImageDraw
from transformers import TextIteratorStreamer

from victor.model import matching
from victor.model.assemble import load_model
from victor.model.comprehension_state import STATE_FILE, has_state, load_state


def text_of(content) -> str:
    """A chat message's text, whether a string or Gradio's / transformers' list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(text_of(part) for part in content)
    return "" if content is None else str(content)


def conversation(history: list[dict], question: str, with_image: bool) -> list[dict]:
    """Chat-template messages: earlier turns, then `question`; the image goes with the first user turn."""
    turns = [{"role": m["role"], "text": text_of(m.get("content"))} for m in history
             if m.get("role") in ("user", "assistant")]
    turns.append({"role": "user", "text": question})
    messages, image_placed = [], False
    for turn in turns:
        content = [{"type": "text", "text": turn["text"]}]
        if turn["role"] == "user" and with_image and not image_placed:
            content.insert(0, {"type": "image"})
            image_placed = True
        messages.append({"role": turn["role"], "content": content})
    return messages


def row_colour(row: int) -> tuple[int, int, int]:
    """A distinct colour per pool row (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((row * 0.6180339887) % 1.0, 0.7, 0.95)
    return int(255 * r), int(255 * g), int(255 * b)


class ChatModel:
    """A loaded checkpoint that answers, streams, and (with a pool) shows patch-to-row matches."""

    def __init__(self, path, dtype: torch.dtype | None = None):
        self.path = Path(path)
        self.model, self.processor = load_model(str(path), dtype=dtype)
        self.model.eval()
        self.pool = load_state(path)["pool"] if has_state(path) else None
        # concurrent sessions (victor serve --concurrency) share the processor: a fast tokenizer
        # can refuse a call while another thread changes its padding state ("Already borrowed")
        self._prepare = threading.Lock()

    @property
    def description(self) -> str:
        c = self.model.config
        pool = f", pool {tuple(self.pool.shape)}" if self.pool is not None else ""
        return f"{self.path.name}: {c.model_type}, {c.image_seq_length} visual tokens per image{pool}"

    def _inputs(self, image, history, question):
        with self._prepare:
            text = self.processor.apply_chat_template(conversation(history, question, image is not None),
                                                      add_generation_prompt=True)
            inputs = self.processor(text=text, images=image, return_tensors="pt").to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def stream(self, image: Image.Image | None, history: list[dict], question: str, temperature: float = 0.2,
               top_p: float = 0.7, max_new_tokens: int = 512) -> Iterator[str]:
        """Yield the answer so far, piece by piece. temperature 0 is greedy decoding."""
        inputs = self._inputs(image.convert("RGB") if image is not None else None, history, question)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=600)
        sampling = (dict(do_sample=True, temperature=float(temperature), top_p=float(top_p)) if temperature > 0
                    else dict(do_sample=False))
        kwargs = dict(**inputs, max_new_tokens=int(max_new_tokens), streamer=streamer,
                      pad_token_id=self.processor.tokenizer.pad_token_id, **sampling)
        failure = []

        def run():
            try:
                with torch.no_grad():
                    self.model.generate(**kwargs)
            except Exception as err:  # surfaced to the caller after the streamer ends
                failure.append(err)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        answer = ""
        for piece in streamer:
            answer += piece
            yield answer
        thread.join()
        if failure:
            raise failure[0]

    @torch.no_grad()
    def pool_matches(self, image: Image.Image, method: str = "nearest") -> tuple[Image.Image, dict]:
        """The image as the model sees it, each patch tinted by its pool row, and the matches.

        Returns (overlay, {"rows": [[row per patch] per grid row], "distinct": n, "top": [(row, patches)]})."""
        if self.pool is None:
            raise ValueError(f"{self.path} has no {STATE_FILE}: no pool to match against")
        pixels = self.processor.image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
        tokens = self.model.model.get_image_features(pixel_values=pixels.to(self.model.dtype)).pooler_output[0]
        side = int(tokens.shape[0] ** 0.5)
        tokens = tokens[-side * side:].float()  # patch tokens only (a kept CLS comes first)
        cost = matching.euclidean_cost(tokens, self.pool.float())
        rows = matching.assign(cost, method).tolist()
        overlay = self._seen_image(pixels[0]).convert("RGB")
        size = overlay.size[0]
        tint = Image.new("RGB", overlay.size)
        draw = ImageDraw.Draw(tint)
        cell = size / side
        for index, row in enumerate(rows):
            r, c = divmod(index, side)
            draw.rectangle([c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1], fill=row_colour(row))
        overlay = Image.blend(overlay, tint, 0.45)
        counts: dict[int, int] = {}
        for row in rows:
            counts[row] = counts.get(row, 0) + 1
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        grid = [rows[i * side:(i + 1) * side] for i in range(side)]
        return overlay.resize((max(size, 336), max(size, 336)), Image.NEAREST), {
            "rows": grid, "distinct": len(counts), "top": top, "method": method}

    def _seen_image(self, pixels: torch.Tensor) -> Image.Image:
        """Undo the processor's normalisation: the padded, resized image the encoder receives."""
        ip = self.processor.image_processor
        mean = torch.tensor(ip.image_mean).view(3, 1, 1)
        std = torch.tensor(ip.image_std).view(3, 1, 1)
        array = ((pixels.float() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(array)
