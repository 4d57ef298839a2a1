"""`victor bench`: measurements that back performance claims, as ratios taken in one run.

    victor bench step      stage-1.5 training step vs a plain LLaVA step (same model, same batch)
    victor bench matching  exact batched assignment vs scipy's linear_sum_assignment per image
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time


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
    import torch
    from PIL import Image

    from victor.data.collate import LlavaCollator
    from victor.data.llava import Sample
    from victor.data.world import build_tokenizer
    from victor.data.templates import TEMPLATE_TEXT
    from victor.model.assemble import build_model
    from victor.model.comprehension import ComprehensionConfig, VisualComprehension
    from victor.tiny import save_backbones

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    words = [TEMPLATE_TEXT, "describe the image in detail . a red circle is at the top left of the picture ."]
    with tempfile.TemporaryDirectory() as tmp:
        vision, llm = save_backbones(tmp, build_tokenizer(words), image_size=args.image_size, patch_size=args.patch,
                                     vision_hidden=args.vision_hidden, llm_hidden=args.hidden, llm_layers=args.layers)
        model, processor = build_model(vision, llm)
    collator = LlavaCollator(processor, "chat", max_length=4096)
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="victor bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("step", help="stage-1.5 step overhead against a plain step")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--image-size", type=int, default=96)
    s.add_argument("--patch", type=int, default=8)
    s.add_argument("--vision-hidden", type=int, default=64)
    s.add_argument("--hidden", type=int, default=256)
    s.add_argument("--layers", type=int, default=4)
    s.add_argument("--pool-size", type=int, default=512)
    s.add_argument("--methods", nargs="+", default=["hungarian", "nearest"])
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--threads", type=int, default=2)
    sub.add_parser("matching", help="exact assignment against scipy per image", add_help=False)
    args, rest = p.parse_known_args(argv)
    if args.what == "step":
        bench_step(args)
    else:
        from victor.model.matching_bench import main as matching_main

        matching_main(rest)
