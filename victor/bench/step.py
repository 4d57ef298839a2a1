"""`victor bench step`: a stage-1.5 training step against a plain LLaVA step, same model and batch."""
from __future__ import annotations

import statistics
import tempfile
import time

import torch
from PIL import Image

from victor.config import ComprehensionConfig
from victor.data.collate import LlavaCollator
from victor.data.llava import Sample
from victor.data.templates import TEMPLATE_TEXT
from victor.model.assemble import build_model
from victor.model.comprehension import VisualComprehension
from victor.tiny.backbones import save_backbones
from victor.tiny.world import build_tokenizer


def _time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench_step(args) -> list[dict]:
    """Median wall time of forward+backward: plain LLaVA vs stage 1.5 per matching method."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    words = [TEMPLATE_TEXT, "describe the image in detail . a red circle is at the top left of the picture ."]
    with tempfile.TemporaryDirectory() as tmp:
        vision, llm = save_backbones(tmp, build_tokenizer(words), image_size=args.image_size, patch_size=args.patch,
                                     vision_hidden=args.vision_hidden, llm_hidden=args.hidden, llm_layers=args.layers)
        model, processor = build_model(vision, llm)
    collator = LlavaCollator(processor, model.config.image_seq_length, "chat", max_length=4096)
    samples = [Sample(str(i), [{"role": "user", "content": "<image>\ndescribe the image in detail ."},
                               {"role": "assistant", "content": "a red circle is at the top left . " * 4}],
                      [Image.effect_noise((args.image_size, args.image_size), 40 + i).convert("RGB")])
               for i in range(args.batch)]
    batch = collator(samples)
    n_visual = model.config.image_seq_length

    def plain():
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    rows = [{"variant": "plain LLaVA step", "seconds": _time(plain, args.repeats)}]
    for method in args.methods:
        for attention in ("causal", "bidirectional-visual"):
            cfg = ComprehensionConfig(pool_size=args.pool_size, matching=method, attention=attention)
            vc = VisualComprehension(model, cfg)
            vc.seed_pool(vc.project_images(batch["pixel_values"]))

            def step(vc=vc):
                vc.zero_grad(set_to_none=True)
                vc(**batch)["loss"].backward()

            rows.append({"variant": f"stage 1.5 ({method}, {attention})", "seconds": _time(step, args.repeats)})
    base = rows[0]["seconds"]
    for row in rows:
        row["ratio"] = row["seconds"] / base
    print(f"batch {args.batch} x {n_visual} visual tokens, LLM hidden {args.hidden} x {args.layers} layers, "
          f"pool {args.pool_size}, {args.threads} threads, median of {args.repeats}")
    print(f"{'variant':45s} {'ms/step':>9s} {'x plain':>8s}")
    for row in rows:
        print(f"{row['variant']:45s} {1000 * row['seconds']:9.1f} {row['ratio']:8.2f}")
    return rows
